"""sources/profiles/decoders.py: every decoder, fed arbitrary input, fails only with a reason."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtls_middleware import CertificateError, MTLSError, Reason
from mtls_middleware.sources import PROFILES
from mtls_middleware.sources.profiles import Decoder, decoders

LIMIT = 64 * 1024
ALLOWED = (Reason.MALFORMED_CERTIFICATE, Reason.CERTIFICATE_TOO_LARGE)

DECODERS = [
    decoders.url_escaped_pem,
    decoders.pem_with_spaces,
    decoders.b64_der,
    decoders.quoted_b64_der,
    decoders.quoted_concatenated_der,
    decoders.traefik_certs,
    decoders.sf_byte_sequence,
    decoders.sf_byte_sequence_list,
    decoders.envoy_xfcc,
]

#: Text shaped like the real thing, so the search reaches deep into each grammar.
SHAPED = st.one_of(
    st.text(),
    st.text(st.characters(codec="utf-8", categories=["Cs", "Zs", "Lo", "Nd"])),
    st.binary().map(quote),
    st.text(alphabet='ABCDEFabcdef0123456789+/=:;,"\\ -%', max_size=200),
    st.lists(st.text(alphabet='Cert=Hash;,"\\%0Aab', max_size=30), max_size=6).map(";".join),
    st.binary(max_size=300).map(lambda b: ":" + __import__("base64").b64encode(b).decode() + ":"),
    st.binary(max_size=300).map(lambda b: __import__("base64").b64encode(b).decode()),
)


@pytest.mark.parametrize("decode", DECODERS, ids=lambda d: d.__name__)
@settings(max_examples=150, deadline=None)
@given(value=SHAPED)
def test_decoder_returns_bytes_or_a_reason(decode: Decoder, value: str) -> None:
    try:
        items = decode(value)
    except MTLSError as exc:
        reason = exc.reason
    else:
        reason = None
    if reason is not None:
        assert reason in ALLOWED
        return
    assert isinstance(items, list)
    assert all(isinstance(i, bytes) for i in items)


@pytest.mark.parametrize("name", sorted(PROFILES))
@settings(max_examples=60, deadline=None)
@given(values=st.lists(SHAPED, min_size=1, max_size=6))
def test_every_profile_only_ever_refuses_with_a_reason(name: str, values: list[str]) -> None:
    # Every header of the profile gets an arbitrary value, from WSGI and from ASGI.
    profile = PROFILES[name]
    names = profile.header_names
    chosen = {names[i % len(names)]: v for i, v in enumerate(values)}
    environ = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in chosen.items()}
    for via in ("wsgi", "asgi"):
        try:
            if via == "wsgi":
                found = profile.extract_wsgi(environ, max_bytes=LIMIT)
            else:
                pairs = [(k.lower().encode(), v.encode("utf-8")) for k, v in chosen.items()]
                found = profile.extract_headers(pairs, max_bytes=LIMIT)
            items = found.items if found is not None else ()
        except MTLSError as exc:
            reason: Reason | None = exc.reason
            items = ()
        else:
            reason = None
        assert reason in (None, *ALLOWED)
        assert all(isinstance(i, bytes) for i in items)
        if profile.read_verify is not None:
            assert profile.read_verify(values[0]) in (True, False, None)


@pytest.mark.parametrize(
    ("data", "count"),
    [(b"", 0), (b"\x30\x00", 1), (b"\x30\x01\x00\x30\x00", 2), (b"\x30\x81\x01\x00", 1)],
    ids=repr,
)
def test_concatenated_der_splits(data: bytes, count: int) -> None:
    assert len(decoders.concatenated_der(data)) == count


@pytest.mark.parametrize(
    "data",
    [b"\x31\x00", b"\x30", b"\x30\x05\x00", b"\x30\x85\x00\x00\x00\x00\x00", b"\x30\x80", b"\x30\x00\x02"],
    ids=repr,
)
def test_concatenated_der_refuses(data: bytes) -> None:
    with pytest.raises(CertificateError) as info:
        decoders.concatenated_der(data)
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


@pytest.mark.parametrize(
    "value",
    [
        ":AA==:, :AA==:",  # a list where one item belongs: a folded duplicate
        "AA==",  # no colons
        ":AA==",  # unterminated
        ":A*A=:",  # outside the alphabet
        ":AA==:;",  # parameter without a key
        ":AA==:;K=1",  # upper-case key
        ':AA==:;a="\\x"',  # bad string escape
        ":AA==: x",  # trailing text
        "::",  # empty
    ],
    ids=repr,
)
def test_sf_item_is_strict(value: str) -> None:
    with pytest.raises(CertificateError) as info:
        decoders.sf_byte_sequence(value)
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


@pytest.mark.parametrize("value", [":AA==:,", ":AA==:,,:AA==:", ":AA==: :AA==:"], ids=repr)
def test_sf_list_is_strict(value: str) -> None:
    with pytest.raises(CertificateError) as info:
        decoders.sf_byte_sequence_list(value)
    assert info.value.reason is Reason.MALFORMED_CERTIFICATE


def test_sf_list_accepts_tabs_and_missing_padding() -> None:
    assert decoders.sf_byte_sequence_list(":AA:,\t:AAE=:") == [b"\x00", b"\x00\x01"]


def test_xfcc_grammar() -> None:
    parsed = decoders.parse_xfcc('By=a;Subject="x\\"y;z,w";DNS=d1;DNS=d2, by=b;URI=u')
    assert parsed == [
        {"by": ["a"], "subject": ['x"y;z,w'], "dns": ["d1", "d2"]},
        {"by": ["b"], "uri": ["u"]},
    ]


@pytest.mark.parametrize(
    ("reported", "matches"),
    [("ab" * 32, False), ("AB:" * 31 + "AB", False), ("not hex or base64!", False), ("", False)],
    ids=repr,
)
def test_sha256_matches_refuses_others(reported: str, matches: bool) -> None:
    assert decoders.sha256_matches(reported, b"der") is matches
