"""The CSV format of certificate import and export, shared by ``mtls-admin`` and the REST API.

A header row; import reads ``user_id``, ``label`` (empty: the certificate's subject) and either
``pem`` (the PEM text in one quoted field) or ``pem_file`` (a path, only where the caller may read
files: the command line, never the REST API). Other columns are ignored. Export writes
:data:`CSV_COLUMNS` then :data:`EXPORT_EXTRA_COLUMNS` for every certificate, so that importing the
file into a store with the same users gives back the same certificates.

Formula injection
    A spreadsheet opening the export would take a cell starting with ``=``, ``+``, ``-``, ``@``,
    a tab or a carriage return for a formula (``=HYPERLINK(...)`` as a user id or label). Export
    therefore writes such a text cell (user id, label, organisation, and a PEM that does not start
    with its ``-----BEGIN`` line) behind one ``'``, which spreadsheets show as "text"; so that
    export then import gives the same values back, a value that already starts with apostrophes and
    then one of those characters gets one more ``'``, and import takes exactly one leading ``'``
    off a ``user_id``, ``label`` or ``pem`` cell that starts with apostrophes and then one of those
    characters.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..stores.base import BatchRefused, CertificateRecord, Upload

__all__ = [
    "CSV_COLUMNS",
    "EXPORT_EXTRA_COLUMNS",
    "CsvFormatError",
    "CsvRow",
    "export_csv",
    "parse_import",
    "refused_rows",
]

#: Columns import reads (``pem`` or ``pem_file``) and export writes first.
CSV_COLUMNS = ("user_id", "label", "pem")
#: Informational columns export adds after :data:`CSV_COLUMNS`; import ignores them.
EXPORT_EXTRA_COLUMNS = ("org", "fingerprint", "uploaded_at", "not_after")

#: A cell a spreadsheet would evaluate (after any apostrophes in front).
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_PEM_START = "-----BEGIN "


def _escape(value: str, *, pem: bool = False) -> str:
    """``value`` as an export cell: behind one more ``'`` if a spreadsheet could run it."""
    if _FORMULA.match(value) is None or (pem and value.startswith(_PEM_START)):
        return value
    return "'" + value


def _unescape(value: str) -> str:
    """An import cell's value: the ``'`` :func:`_escape` added, taken off again."""
    return value[1:] if value.startswith("'") and _FORMULA.match(value, 1) else value


class CsvFormatError(ValueError):
    """The CSV cannot be imported as it is (no header, missing columns, bad quoting, an unreadable
    ``pem_file``); the message says what to fix."""


@dataclass(frozen=True)
class CsvRow:
    """One data row: its number as a spreadsheet shows it (the header is row 1) and its upload."""

    row: int
    upload: Upload


def _iso(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_import(raw: bytes, *, name: str, base: Path | None) -> list[CsvRow]:
    """The rows of an import file. ``name`` names the file in messages; ``base`` is the directory
    ``pem_file`` paths are relative to, or None where files must not be read (``pem_file`` is then
    refused).

    Raises:
        CsvFormatError: what is wrong with the file.
    """
    # surrogateescape: whatever bytes a PEM field holds come back out unchanged.
    text = raw.decode("utf-8-sig", "surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames
        if not header:
            raise CsvFormatError(f"{name} is empty; it needs a header row: {','.join(CSV_COLUMNS)}")
        missing = [c for c in ("user_id",) if c not in header]
        if "pem" not in header and "pem_file" not in header:
            missing.append("pem (or pem_file)")
        if missing:
            raise CsvFormatError(f"{name} lacks the column(s) {', '.join(missing)}")
        rows: list[CsvRow] = []
        for index, fields in enumerate(reader):
            number = index + 2
            if None in fields:
                raise CsvFormatError(f"{name} row {number} has more fields than the header")
            pem_text = fields.get("pem") or ""
            pem_file = fields.get("pem_file") or ""
            if pem_text and pem_file:
                raise CsvFormatError(f"{name} row {number} gives both pem and pem_file; give one")
            if pem_file:
                if base is None:
                    raise CsvFormatError(
                        f"{name} row {number}: pem_file is not accepted here; put the PEM in a pem column"
                    )
                try:
                    pem = (base / pem_file).read_bytes()
                except OSError as exc:
                    raise CsvFormatError(
                        f"{name} row {number}: cannot read pem_file {pem_file}: {exc.strerror or exc}"
                    ) from None
            else:
                pem = _unescape(pem_text).encode("utf-8", "surrogateescape")
            upload = Upload(
                pem=pem,
                user_id=_unescape(fields.get("user_id") or ""),
                label=_unescape(fields.get("label") or "") or None,
            )
            rows.append(CsvRow(number, upload))
    except csv.Error as exc:
        raise CsvFormatError(f"{name} is not valid CSV: {exc}") from None
    return rows


def refused_rows(
    refused: BatchRefused, rows: Sequence[CsvRow], *, detail: bool = True
) -> list[dict[str, Any]]:
    """Every refused row of an import: ``{"row", "user_id", "error", "message"}``. The message is
    what exactly was wrong (for the operator at the command line), or with ``detail=False`` the
    reason's fixed sentence (for a remote client: a parser's message may quote internals)."""
    return [  # refusals come in batch order, one index per uploaded row
        {
            "row": rows[index].row,
            "user_id": rows[index].upload.user_id,
            "error": error.reason.value,
            "message": error.detail if detail else error.reason.message,
        }
        for index, error in refused.refusals
    ]


def export_csv(certs: Iterable[CertificateRecord]) -> bytes:
    """The export file of ``certs``, ordered by organisation, user, upload time, fingerprint."""
    ordered = sorted(certs, key=lambda c: (c.org, c.user_id, c.uploaded_at, c.fingerprint))
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow((*CSV_COLUMNS, *EXPORT_EXTRA_COLUMNS))
    for cert in ordered:
        writer.writerow(
            (
                _escape(cert.user_id),
                _escape(cert.label),
                _escape(cert.pem.decode("utf-8", "surrogateescape"), pem=True),  # the upload's exact bytes
                _escape(cert.org),
                cert.fingerprint,
                _iso(cert.uploaded_at),
                _iso(cert.not_after),
            )
        )
    return out.getvalue().encode("utf-8", "surrogateescape")
