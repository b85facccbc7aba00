"""Jobs on the test clusters. A package, so that a module here may share its name with the
local-scheduler test it mirrors in tests/jobs (test_resume_exactly_once)."""
