"""Unit tests for transforms.charset (MSH-18 / table 0211 resolution, decoding) and
transforms.datetimes (HL7 DTM -> ISO 8601 keeping precision, ISO -> naive UTC)."""
from __future__ import annotations

import pytest
from datetime import datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import charset
from transforms.charset import UnsupportedCharset, decode, normalize_codec
from transforms.datetimes import InvalidDate, iso_date, parse_dtm, to_utc

# ---------------------------------------------------------------------------------------------
# normalize_codec


@pytest.mark.parametrize("name,codec", [
    ("ASCII", "ascii"),
    ("ISO IR6", "ascii"),
    ("8859/1", "iso-8859-1"),
    ("ISO IR100", "iso-8859-1"),
    ("8859/2", "iso-8859-2"),
    ("8859/15", "iso-8859-15"),
    ("UNICODE UTF-8", "utf-8"),
    ("ISO IR192", "utf-8"),
    ("UTF-8", "utf-8"),          # not in table 0211, common in the wild
    ("UTF8", "utf-8"),
    ("WINDOWS-1252", "cp1252"),
    ("BIG-5", "big5"),
    ("GB 18030-2000", "gb18030"),
    ("KS X 1001", "euc-kr"),
    ("ISO IR87", "iso2022_jp"),
])
def test_normalize_codec_table_0211(name, codec):
    assert normalize_codec(name) == codec


@pytest.mark.parametrize("name,codec", [
    (" unicode utf-8 ", "utf-8"),
    ("8859/15\t", "iso-8859-15"),
    ("ascii", "ascii"),
    ("Windows-1252", "cp1252"),
])
def test_normalize_codec_case_and_whitespace(name, codec):
    assert normalize_codec(name) == codec


@pytest.mark.parametrize("name,codec", [("cp1252", "cp1252"), ("utf_8", "utf-8"), ("utf-8-sig", "utf-8-sig")])
def test_normalize_codec_python_names(name, codec):
    assert normalize_codec(name) == codec


@pytest.mark.parametrize("name", [None, "", "   "])
def test_normalize_codec_empty(name):
    assert normalize_codec(name) is None


@pytest.mark.parametrize("name", ["klingon", "8859/99", "UNICODE UTF-9", "ISO IR999"])
def test_normalize_codec_unknown_raises_lookup_error(name):
    with pytest.raises(LookupError):
        normalize_codec(name)


@pytest.mark.parametrize("name", ["UNICODE", "UNICODE UTF-16", "UNICODE UTF-32", "UTF-16", "UTF-32", "unicode",
                                  "utf-16le", "UTF-16BE", "utf_32", "U16"])
def test_normalize_codec_utf16_and_utf32_unsupported(name):
    with pytest.raises(UnsupportedCharset):
        normalize_codec(name)


def test_unsupported_charset_is_not_a_lookup_error():
    # decode() lets UnsupportedCharset through but swallows LookupError: they must stay distinct.
    assert not issubclass(UnsupportedCharset, LookupError)
    assert issubclass(UnsupportedCharset, ValueError)


@pytest.mark.parametrize("name", ["iso-8859-1", "latin-1", "ISO-8859-1", "latin1"])
def test_normalize_codec_latin1_spellings_agree(name):
    assert normalize_codec(name) == normalize_codec("8859/1")


@pytest.mark.parametrize("name", ["hex", "base64", "rot13", "zlib", "bz2", "uu", "quopri"])
def test_normalize_codec_rejects_non_text_codecs(name):
    with pytest.raises(LookupError):
        normalize_codec(name)


# ---------------------------------------------------------------------------------------------
# decode

def test_decode_ascii_reports_declared_codec():
    raw = b"MSH|^~\\&|A"
    assert decode(raw, None, None) == ("MSH|^~\\&|A", "utf-8", [])
    assert decode(raw, "8859/1", None) == ("MSH|^~\\&|A", "iso-8859-1", [])
    assert decode(raw, None, "8859/15") == ("MSH|^~\\&|A", "iso-8859-15", [])


def test_decode_no_declaration_valid_utf8():
    raw = "Kɔfi Sénamé ɖƒɣŋɔɛʋ".encode()
    assert decode(raw, None, None) == ("Kɔfi Sénamé ɖƒɣŋɔɛʋ", "utf-8", [])


def test_decode_no_declaration_latin1_inferred_as_cp1252():
    raw = "Améyo Sénamé".encode("latin-1") + b" \x80 \x92"
    text, codec, flags = decode(raw, None, None)
    assert (text, codec, flags) == ("Améyo Sénamé € \u2019", "cp1252", ["CHARSET_INFERRED"])


def test_decode_cp1252_undefined_bytes_do_not_crash():
    raw = b"a\x81b\x8dc\x8fd\x90e\x9df\xe9"
    text, codec, flags = decode(raw, None, None)
    assert codec == "cp1252" and "CHARSET_INFERRED" in flags
    assert text == "a\x81b\x8dc\x8fd\x90e\x9dfé"
    assert len(text) == len(raw)


def test_decode_declared_utf8_invalid_bytes_replaced():
    text, codec, flags = decode(b"Ab\xc3\x28c", "UNICODE UTF-8", None)
    assert (text, codec, flags) == ("Ab\ufffd(c", "utf-8", ["INVALID_BYTES"])


@pytest.mark.parametrize("declared", ["8859/1", "8859/15", "ISO IR100"])
def test_decode_declared_latin_but_utf8(declared):
    text, codec, flags = decode("Sénamé ɖ".encode(), declared, None)
    assert (text, codec, flags) == ("Sénamé ɖ", "utf-8", ["CHARSET_MISMATCH"])


def test_one_stray_latin1_byte_does_not_garble_the_utf8_names():
    """A UTF-8 message with one CP1252 byte in a note: the note is read as CP1252, the names stay
    UTF-8 (the whole message used to be read as CP1252: Kɔfi -> KÉ”fi)."""
    raw = "PID|1||X||Kɔfi^Sénamé\r".encode() + b"NTE|1||caf\xe9\r"
    for declared, fallback in ((None, None), (None, "utf-8"), ("8859/1", None), ("ASCII", None)):
        assert decode(raw, declared, fallback) == ("PID|1||X||Kɔfi^Sénamé\rNTE|1||café\r", "utf-8",
                                                   ["MIXED_CHARSET"]), (declared, fallback)
    # The same bytes decode the same way again with the codec recorded (routing re-decodes).
    assert decode(raw, None, "utf-8")[0] == decode(raw, None, None)[0]


@pytest.mark.parametrize("value, codec, expected, flagged", [
    ("Am\\XE9\\yo", "utf-8", "Améyo", True),           # a Latin-1 byte escaped in a UTF-8 message
    ("S\\XC3\\\\XA9\\nam", "utf-8", "Sénam", False),  # one UTF-8 letter over two escapes
    ("\\XC994\\", "utf-8", "ɔ", False),
    ("Am\\XE9\\yo", "iso-8859-1", "Améyo", False),
])
def test_hex_escapes(value, codec, expected, flagged):
    from transforms.parser import unescape

    flags = []
    assert unescape(value, codec=codec, flags=flags) == expected
    assert ("ESCAPE_CHARSET_INFERRED" in flags) == flagged


def test_decode_declared_latin1_genuine():
    raw = "Sénamé Agbo-Zégué".encode("latin-1")
    assert decode(raw, "8859/1", None) == ("Sénamé Agbo-Zégué", "iso-8859-1", [])


def test_decode_declared_latin1_with_cp1252_bytes():
    text, codec, flags = decode(b"N\x92Guessan \x80 5", "8859/1", None)
    assert (text, codec, flags) == ("N\u2019Guessan \u20ac 5", "cp1252", ["CHARSET_CP1252"])


@pytest.mark.parametrize("fallback", ["iso-8859-1", "latin-1"])
def test_decode_facility_latin1_with_cp1252_bytes(fallback):
    """Regression: the Python spelling of a Latin-1 facility default used to skip the CP1252 rescue."""
    text, codec, flags = decode(b"N\x92Guessan \x80 5", None, fallback)
    assert (text, codec, flags) == ("N\u2019Guessan \u20ac 5", "cp1252", ["CHARSET_CP1252"])


def test_decode_declared_8859_15_euro():
    assert decode(b"\xa4 5", "8859/15", None) == ("\u20ac 5", "iso-8859-15", [])
    assert decode(b"\xa4 5", "8859/1", None) == ("\u00a4 5", "iso-8859-1", [])


def test_decode_declared_big5():
    raw = "醫院".encode("big5")
    assert decode(raw, "BIG-5", None) == ("醫院", "big5", [])


def test_decode_declaration_beats_facility_default():
    raw = "Sénamé".encode("latin-1")
    assert decode(raw, "8859/1", "utf-8") == ("Sénamé", "iso-8859-1", [])
    text, codec, flags = decode(raw, "UNICODE UTF-8", "iso-8859-1")
    assert codec == "utf-8" and flags == ["INVALID_BYTES"] and text == "S\ufffdnam\ufffd"


def test_decode_facility_default_used_without_declaration():
    raw = "Sénamé".encode("latin-1")
    text, codec, flags = decode(raw, None, "8859/1")
    assert (text, codec, flags) == ("Sénamé", "iso-8859-1", [])
    text, codec, flags = decode(raw, "", "cp1252")
    assert (text, codec, flags) == ("Sénamé", "cp1252", [])


def test_decode_unknown_declaration_falls_back():
    raw = "Sénamé".encode("latin-1")
    text, codec, flags = decode(raw, "8859/99", "8859/1")
    assert (text, codec) == ("Sénamé", "iso-8859-1")
    assert flags == ["CHARSET_UNKNOWN"]
    text, codec, flags = decode(raw, "8859/99", None)
    assert (text, codec) == ("Sénamé", "cp1252")
    assert flags == ["CHARSET_UNKNOWN", "CHARSET_INFERRED"]


@pytest.mark.parametrize("fallback", ["no-such-codec", "UTF-16"])
def test_decode_bad_facility_default_is_flagged_not_raised(fallback):
    text, codec, flags = decode("Sénamé".encode(), None, fallback)
    assert (text, codec) == ("Sénamé", "utf-8")
    assert flags == ["FALLBACK_CHARSET_UNKNOWN"]


@pytest.mark.parametrize("declared", ["UNICODE", "UNICODE UTF-16"])
def test_decode_declared_utf16_raises_unsupported(declared):
    with pytest.raises(UnsupportedCharset):
        decode(b"MSH|^~\\&|", declared, None)


@settings(max_examples=200, deadline=None, database=None)
@given(raw=st.binary(max_size=300),
       declared=st.sampled_from([None, "", "FOO"] + sorted(charset.TABLE_0211)),
       fallback=st.sampled_from([None, "iso-8859-1", "utf-8", "cp1252", "8859/1", "bogus", "UTF-16"]))
def test_decode_never_raises_for_table_names(raw, declared, fallback):
    text, codec, flags = decode(raw, declared, fallback)
    assert isinstance(text, str)
    assert codec
    if codec == "utf-8" and "INVALID_BYTES" not in flags:
        assert text.encode("utf-8") == raw
    if raw.isascii():
        assert text == raw.decode("ascii")


# ---------------------------------------------------------------------------------------------
# parse_dtm

@pytest.mark.parametrize("value,iso", [
    ("2024", "2024"),
    ("202403", "2024-03"),
    ("20240315", "2024-03-15"),
    ("2024031508", "2024-03-15T08"),
    ("202403150830", "2024-03-15T08:30"),
    ("20240315083059", "2024-03-15T08:30:59"),
    ("20240315083059.1", "2024-03-15T08:30:59.1"),
    ("20240315083059.123456", "2024-03-15T08:30:59.123456"),
    ("20240315083059+0000", "2024-03-15T08:30:59+00:00"),
    ("20240315083059-0500", "2024-03-15T08:30:59-05:00"),
    ("20240315083059+1400", "2024-03-15T08:30:59+14:00"),
    ("20240315083059.25-0330", "2024-03-15T08:30:59.25-03:30"),
    ("2024031508+0100", "2024-03-15T08+01:00"),
    ("202403150830+0100", "2024-03-15T08:30+01:00"),
    (" 20240315 ", "2024-03-15"),
    ("10000101", "1000-01-01"),
    ("29991231235959", "2999-12-31T23:59:59"),
])
def test_parse_dtm_valid_keeps_precision(value, iso):
    assert parse_dtm(value) == iso
    assert parse_dtm(value) == iso  # second call (cached hot path) agrees


@pytest.mark.parametrize("value,iso", [
    ("20240229", "2024-02-29"),
    ("20000229", "2000-02-29"),
    ("16000229", "1600-02-29"),
    ("20240229235959", "2024-02-29T23:59:59"),
])
def test_parse_dtm_leap_days(value, iso):
    assert parse_dtm(value) == iso


@pytest.mark.parametrize("value,iso", [
    ("20240315+0100", "2024-03-15"),
    ("20240315-0500", "2024-03-15"),
    ("202403+0000", "2024-03"),
    ("2024-0100", "2024"),
])
def test_parse_dtm_offset_on_bare_date_is_dropped(value, iso):
    assert parse_dtm(value) == iso


@pytest.mark.parametrize("value", [
    "", "   ", "2", "202", "20240", "2024031", "202403150", "20240315083", "2024031508305", "202403150830591",
    "20230229", "19000229", "21000229", "20240230", "20240431", "20240132", "20240100", "20241301", "20240001",
    "2024031524", "202403152360", "20240315235960", "00000101", "0999", "09990101", "3000", "99991231",
    "2024-03-15", "20240315T0830", "abcd", "2024031a", "２０２４０３１５x",
    "2024031508.5", "20240315083059.", "20240315083059.1234567", "20240315083059.12a",
    "20240315083059+01", "20240315083059+010", "20240315083059+1500", "20240315083059+0160",
    "20240315083059+01:00", "20240315083059+0100+0100", "20240315083059Z",
])
def test_parse_dtm_invalid(value):
    with pytest.raises(InvalidDate):
        parse_dtm(value)
    with pytest.raises(InvalidDate):
        parse_dtm(value)  # invalid values are never cached as valid


@pytest.mark.parametrize("value", ["20230230", "20231301", "19870231", "0000"])
def test_invalid_date_message_never_contains_the_value(value):
    with pytest.raises(InvalidDate) as exc:
        parse_dtm(value)
    assert value not in str(exc.value)
    assert str(exc.value)


@pytest.mark.parametrize("value", ["202²", "20240315+0²00", "２０２４", "２０２４０３１５", "20240315083000.１"])
def test_parse_dtm_non_ascii_digits_are_invalid(value):
    with pytest.raises(InvalidDate):
        parse_dtm(value)


def test_iso_date():
    assert iso_date("20240315083000+0100") == "2024-03-15"
    assert iso_date("202403") == "2024-03"
    assert iso_date("2024") == "2024"
    with pytest.raises(InvalidDate):
        iso_date("20240230")


# ---------------------------------------------------------------------------------------------
# to_utc

@pytest.mark.parametrize("iso,utc", [
    (None, None),
    ("", None),
    ("2024", "2024-01-01 00:00:00"),
    ("2024-03", "2024-03-01 00:00:00"),
    ("2024-03-15", "2024-03-15 00:00:00"),
    ("2024-03-15T08", "2024-03-15 08:00:00"),
    ("2024-03-15T08:30", "2024-03-15 08:30:00"),
    ("2024-03-15T08:30:59", "2024-03-15 08:30:59"),
    ("2024-03-15T08:30:59.987", "2024-03-15 08:30:59"),
])
def test_to_utc_partial_values_start_of_period(iso, utc):
    assert to_utc(iso) == utc


@pytest.mark.parametrize("iso,utc", [
    ("2024-03-15T08:30:00+00:00", "2024-03-15 08:30:00"),
    ("2024-03-15T08:30:00+01:00", "2024-03-15 07:30:00"),
    ("2024-03-15T08:30:00-05:00", "2024-03-15 13:30:00"),
    ("2024-03-15T08:30:00+05:45", "2024-03-15 02:45:00"),
    ("2024-01-01T00:30:00+01:00", "2023-12-31 23:30:00"),
    ("2024-02-29T23:00:00-02:00", "2024-03-01 01:00:00"),
    ("2024-03-15T08+01:00", "2024-03-15 07:00:00"),
    ("2024-03-15T08:30+01:00", "2024-03-15 07:30:00"),
    ("2024-03-15T08:30:00.5+01:00", "2024-03-15 07:30:00"),
])
def test_to_utc_offsets(iso, utc):
    assert to_utc(iso) == utc


@settings(max_examples=500, deadline=None)
@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(2999, 12, 31, 23, 59, 59)),
       st.sampled_from([4, 6, 8, 10, 12, 14]),
       st.sampled_from(["", "+0000", "+0100", "-0530"]),
       st.sampled_from(["Africa/Lome", "UTC", "Africa/Accra", "Africa/Abidjan", "Europe/Paris", "America/New_York"]))
def test_to_utc_shortcut_agrees_with_the_datetime_path(dt, precision, offset, tz):
    """to_utc answers parse_dtm's full-second values in UTC+0 zones without datetime arithmetic;
    for every precision, offset and zone it must agree with the general path."""
    from transforms.datetimes import _to_utc

    iso = parse_dtm(dt.strftime("%Y%m%d%H%M%S")[:precision] + offset)
    assert to_utc(iso, tz) == _to_utc(iso, tz)


@pytest.mark.parametrize("tz", ["Africa/Lome", "UTC", "Africa/Accra", "Africa/Abidjan"])
def test_to_utc_naive_in_utc0_zones_unchanged(tz):
    assert to_utc("2024-07-15T08:30:00", tz) == "2024-07-15 08:30:00"
    assert to_utc("2024-03-15T08:30:00") == "2024-03-15 08:30:00"  # default zone is Africa/Lome


@pytest.mark.parametrize("iso,tz,utc", [
    ("2024-03-15T08:30:00", "Africa/Lagos", "2024-03-15 07:30:00"),
    ("2024-01-15T08:30:00", "Europe/Paris", "2024-01-15 07:30:00"),
    ("2024-07-15T08:30:00", "Europe/Paris", "2024-07-15 06:30:00"),
    ("2024-07-15T08:30:00", "America/New_York", "2024-07-15 12:30:00"),
    ("2024", "Europe/Paris", "2023-12-31 23:00:00"),
])
def test_to_utc_naive_in_other_zones(iso, tz, utc):
    assert to_utc(iso, tz) == utc


def test_to_utc_explicit_offset_beats_zone():
    assert to_utc("2024-07-15T08:30:00+00:00", "Europe/Paris") == "2024-07-15 08:30:00"
    assert to_utc("2024-07-15T08:30:00-05:00", "Europe/Paris") == "2024-07-15 13:30:00"


@pytest.mark.parametrize("value,utc", [
    ("20240315083000+0100", "2024-03-15 07:30:00"),
    ("20240315", "2024-03-15 00:00:00"),
    ("20240315+0100", "2024-03-15 00:00:00"),  # offset dropped on a bare date
    ("202403", "2024-03-01 00:00:00"),
])
def test_parse_dtm_then_to_utc(value, utc):
    assert to_utc(parse_dtm(value)) == utc


@settings(max_examples=2000, deadline=None, database=None)
@given(y=st.integers(990, 3010), mo=st.integers(0, 13), d=st.integers(0, 32), h=st.integers(0, 25),
       mi=st.integers(0, 61), s=st.integers(0, 61))
def test_full_second_fast_path_agrees_with_the_general_rules(y, mo, d, h, mi, s):
    """The 14-digit shortcut accepts and rejects exactly what the general parser does (a
    leading space forces the general path, which strips it)."""
    from transforms.datetimes import InvalidDate, _parse_slow

    value = f"{y:04d}{mo:02d}{d:02d}{h:02d}{mi:02d}{s:02d}"

    def outcome(v):
        try:
            return _parse_slow(v)
        except InvalidDate:
            return "invalid"

    assert outcome(value) == outcome(" " + value)
