"""``manage.py mtls <mtls-admin arguments>``: the ``mtls-admin`` commands over this project's
database (the ``django://`` store).

``manage.py mtls user add alice --org acme``, ``manage.py mtls cert upload alice.pem --user
alice``, ``manage.py mtls --json cert list``, ``manage.py mtls history --failed``. The exit
status is ``mtls-admin``'s: 0 done, 1 refused (the reason code is printed), 2 usage error.
``--db`` cannot be given: the store is always this project's database.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mtls_middleware.admin.cli import main

__all__ = ["Command"]

_URL = "django://"
# Django's own options, which manage.py has handled before the command runs.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def _strip_django_options(argv: Sequence[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _DJANGO_OPTIONS:
            skip = True
            continue
        if arg.startswith(tuple(f"{name}=" for name in _DJANGO_OPTIONS)):
            continue
        kept.append(arg)
    return kept


class Command(BaseCommand):
    help = (
        "Manage client certificates, users, organisations and the login history in this "
        "project's database: the mtls-admin commands (run 'manage.py mtls --help')."
    )
    # Usable also to repair a project whose checks fail (a store with no certificates yet).
    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="mtls-admin arguments")

    def run_from_argv(self, argv: list[str]) -> None:
        """``manage.py mtls ...``: everything after ``mtls`` goes to ``mtls-admin`` unparsed (its
        own ``--help`` and ``--json`` included)."""
        status = self.run_mtls_admin(_strip_django_options(argv[2:]))
        if status:
            sys.exit(status)

    def handle(self, *args: str, **options: Any) -> None:
        """``call_command("mtls", "cert", "list", "--json")``; a non-zero status raises
        ``CommandError`` with it as ``returncode``."""
        status = self.run_mtls_admin(list(args))
        if status:
            raise CommandError(f"mtls-admin exited with status {status}", returncode=status)

    def run_mtls_admin(self, args: Sequence[str]) -> int:
        """Run ``mtls-admin --db django:// ARGS``; its output goes to this command's streams."""
        if any(arg == "--db" or arg.startswith("--db=") for arg in args):
            self.stderr.write("manage.py mtls always uses this project's database; drop --db")
            return 2
        with contextlib.redirect_stdout(self.stdout._out), contextlib.redirect_stderr(self.stderr._out):
            return main(["--db", _URL, *args])
