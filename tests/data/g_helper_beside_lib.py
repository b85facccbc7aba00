"""The helper module of g_helper_beside.py."""


def scale(n):
    return 3 * n + 1
