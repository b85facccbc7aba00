"""What every command of d4p-hpc shares, kept small: the in-job entry points import it too, and
importing :mod:`d4p_hpc.cli` would bring in every subcommand."""

from __future__ import annotations

import click

from d4p_hpc.errors import D4pHpcError


class Command(click.Command):
    """Turns every D4pHpcError into ``Error: message`` and its exit code, in one place: for the
    ``d4p-hpc`` group and for the in-job entry points (``python -m d4p_hpc.mappings.worker``,
    ``python -m d4p_hpc.mappings.redis_server``), which are commands of their own."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except D4pHpcError as err:
            exc = click.ClickException(str(err))
            exc.exit_code = err.exit_code
            raise exc from None
