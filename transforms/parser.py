"""Fast, lossless HL7 v2 tokenizer: the hot path of every ingest.

Inputs: bytes (a file streamed in chunks, or one MLLP frame). Outputs:
- ``iter_units(stream)`` splits a byte stream into message units (MSH ... up to the next MSH or batch
  segment) and batch envelope segments (FHS/BHS/BTS/FTS) *without decoding*, so each unit's bytes are
  exactly the bytes received and its SHA-256 is stable;
- ``iter_file(path)`` adds batch bookkeeping (BTS-1/FTS-1 reconciliation) on top of ``iter_units``;
- ``parse(raw)`` decodes one unit (charset.py) and tokenizes it into a ``Message``: delimiters from
  MSH-1/MSH-2, any mix of CR / LF / CRLF terminators, BOM and leading whitespace stripped, blank
  lines skipped, literal newlines inside field text re-joined to their segment.

Values are split lazily (segments into fields eagerly, components only when asked) and unescaped
once, at extraction time. hl7apy is deliberately absent from this module: it costs ~6 ms per
message (see docs/parser.md for where it is used instead).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field as dc_field
from typing import BinaryIO, Iterator, NamedTuple, Protocol

from . import charset as _charset

BOM = b"\xef\xbb\xbf"
HEADER_IDS = (b"MSH", b"FHS", b"BHS", b"BTS", b"FTS")
CHUNK = 1 << 20
MAX_UNIT_BYTES = 64 << 20  # a single message larger than this is cut into an error unit


class Delimiters(NamedTuple):
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_DELIMITERS = Delimiters()


class ParseIssue(NamedTuple):
    """One problem found in a message. ``message`` never contains field values (patient data)."""

    code: str
    location: str
    message: str
    hl7_code: int = 0  # HL7 table 0357 condition code
    severity: str = "error"  # "error" quarantines; "warning" is recorded and loaded

    def as_dict(self) -> dict:
        return {"code": self.code, "location": self.location, "message": self.message,
                "hl7_code": self.hl7_code, "severity": self.severity}


class Issue(Protocol):
    """What the record needs of an issue: a ``ParseIssue``, or another stage's issue carried
    into the record (``replay.KeptHold``)."""

    @property
    def code(self) -> str: ...

    @property
    def severity(self) -> str: ...

    def as_dict(self) -> dict: ...


_DELIM_CACHE: dict[str, tuple[Delimiters, list[ParseIssue]]] = {}


def read_delimiters(header: str) -> tuple[Delimiters, list[ParseIssue]]:
    """Delimiters from the start of an MSH/FHS/BHS segment (``MSH|^~\\&|...``)."""
    if len(header) >= 4:
        end = header.find(header[3], 4)
        key = header[:end + 1] if end != -1 else header[:12]
        hit = _DELIM_CACHE.get(key)
        if hit is None:
            hit = _read_delimiters(header)
            if len(_DELIM_CACHE) < 256:  # senders use a handful of delimiter sets
                _DELIM_CACHE[key] = hit
        return hit[0], list(hit[1])
    return _read_delimiters(header)


def _read_delimiters(header: str) -> tuple[Delimiters, list[ParseIssue]]:
    issues: list[ParseIssue] = []
    if len(header) < 4:
        return DEFAULT_DELIMITERS, [ParseIssue("BAD_DELIMITERS", "MSH-1", "MSH-1 field separator missing", 102)]
    fs = header[3]
    end = header.find(fs, 4)
    enc = header[4:end] if end != -1 else header[4:]
    if fs.isalnum() or fs in "\r\n ":
        return DEFAULT_DELIMITERS, [ParseIssue("BAD_DELIMITERS", "MSH-1", "field separator is not a legal delimiter", 102)]
    chars = list(enc)
    if len(chars) < 2 or len(chars) > 5 or len(set(chars)) != len(chars) or fs in chars \
            or any(c.isalnum() or c in "\r\n " for c in chars):
        return DEFAULT_DELIMITERS._replace(field=fs), [
            ParseIssue("BAD_DELIMITERS", "MSH-2", "encoding characters must be 2 to 5 distinct non-alphanumeric characters", 102)]
    if len(chars) < 4:
        # Positions define meaning, so a short MSH-2 is only unambiguous when it is a prefix of the
        # standard "^~\\&" (e.g. "^~"); "~\\&" would silently make "~" the component separator.
        if not "^~\\&".startswith(enc):
            return DEFAULT_DELIMITERS._replace(field=fs), [
                ParseIssue("BAD_DELIMITERS", "MSH-2", "fewer than 4 encoding characters that are not a prefix of ^~\\&", 102)]
        chars = list("^~\\&")
        issues.append(ParseIssue("SHORT_ENCODING_CHARACTERS", "MSH-2", "fewer than 4 encoding characters; defaults assumed", 102, "warning"))
    trunc = chars[4] if len(chars) == 5 else ""
    return Delimiters(fs, chars[0], chars[1], chars[2], chars[3], trunc), issues


# ---------------------------------------------------------------------------------------------
# Escapes
_SIMPLE_ESC = {"F": 0, "S": 1, "R": 2, "E": 3, "T": 4, "P": 5}


def unescape(value: str, d: Delimiters = DEFAULT_DELIMITERS, codec: str = "utf-8",
             flags: list | None = None) -> str:
    """Decode HL7 escape sequences once. Unknown or unterminated escapes are kept literally."""
    e = d.escape
    if not e or e not in value:
        return value
    out = []
    i = 0
    n = len(value)
    while i < n:
        j = value.find(e, i)
        if j < 0:
            out.append(value[i:])
            break
        k = value.find(e, j + 1)
        if k < 0:
            out.append(value[i:])
            if flags is not None:
                flags.append("UNTERMINATED_ESCAPE")
            break
        out.append(value[i:j])
        seq = value[j + 1:k]
        if len(seq) == 1 and seq in _SIMPLE_ESC:
            out.append((d.field, d.component, d.repetition, d.escape, d.subcomponent, d.truncation)[_SIMPLE_ESC[seq]])
        elif _is_hex_escape(seq):
            # Adjacent hex escapes are one byte string: a UTF-8 letter may be split over two
            # (\XC3\\XA9\), and decoded one by one each half became U+FFFD.
            hexes = [seq[1:]]
            while k + 1 < n and value[k + 1] == e:
                k2 = value.find(e, k + 2)
                if k2 < 0 or not _is_hex_escape(value[k + 2:k2]):
                    break
                hexes.append(value[k + 3:k2])
                k = k2
            decoded = _decode_escaped(bytes.fromhex("".join(hexes)), codec, flags)
            if "\x00" in decoded:
                decoded = decoded.replace("\x00", "")  # PostgreSQL text cannot hold NUL
                if flags is not None:
                    flags.append("NUL_BYTES_REMOVED")
            out.append(decoded)
        elif seq in (".br", ".sp"):
            out.append("\n")
        elif seq in ("H", "N") or seq[:3] in (".fi", ".nf", ".in", ".ti", ".sk", ".ce"):
            pass  # formatting instructions carry no data
        elif seq[:1] in ("C", "M") and len(seq) > 1 and _is_hex(seq[1:]):
            if flags is not None:
                flags.append("CHARSET_ESCAPE_IGNORED")
        else:
            out.append(value[j:k + 1])
            if flags is not None:
                flags.append("UNKNOWN_ESCAPE")
        i = k + 1
    return "".join(out)


_HEX = re.compile(r"[0-9A-Fa-f]+")


def _is_hex_escape(seq: str) -> bool:
    return seq[:1] == "X" and len(seq) > 1 and len(seq) % 2 == 1 and _is_hex(seq[1:])


def _decode_escaped(data: bytes, codec: str, flags: list | None) -> str:
    """Bytes of ``\X..\`` escapes in the message's codec; bytes that are not valid there are
    read as UTF-8, else CP1252 (flagged), as the charset module reads a message: a Latin-1 ``é``
    escaped in a message decoded as UTF-8 would otherwise become U+FFFD, unflagged."""
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        pass
    if flags is not None:
        flags.append("ESCAPE_CHARSET_INFERRED")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _charset.decode_cp1252(data)


def _is_hex(s: str) -> bool:
    # int(s, 16) would accept "+1", " 1", "0x1F" and "1_0", which bytes.fromhex rejects.
    return bool(_HEX.fullmatch(s))


def escape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Inverse of unescape for delimiters and line breaks (used when building messages)."""
    e = d.escape
    out = value.replace(e, f"{e}E{e}")
    for ch, code in ((d.field, "F"), (d.component, "S"), (d.repetition, "R"), (d.subcomponent, "T")):
        out = out.replace(ch, f"{e}{code}{e}")
    if d.truncation:
        out = out.replace(d.truncation, f"{e}P{e}")
    return out.replace("\r\n", f"{e}.br{e}").replace("\n", f"{e}.br{e}").replace("\r", f"{e}X0D{e}")


# ---------------------------------------------------------------------------------------------
# Segments
# A three-letter line with no field separator is a segment only if it is a known ID: free text
# wrapped onto its own line ("NEG", "POS") must stay in the field it belongs to.
BARE_SEGMENT_IDS = frozenset(
    "MSH EVN PID PD1 NK1 PV1 PV2 DG1 PR1 GT1 IN1 IN2 IN3 OBR OBX NTE ORC RXE RXD RXR RXC RXA TQ1 TQ2 SPM "
    "FT1 MRG TXA SCH RGS AIS AIG AIL AIP AL1 ROL MSA ERR QRD QPD RCP QAK BHS BTS FHS FTS".split())


def split_segments(text: str, fs: str = "|") -> tuple[list[str], list[str]]:
    """Split message text into segment strings. Returns (segments, flags).

    A line that does not start like a segment (three letters/digits then the field separator, or a
    bare segment ID) continues the previous segment: free text in NTE/OBX sometimes carries raw line
    breaks, and splitting there would corrupt both the text and the segment that follows.
    """
    flags: list[str] = []
    if "\n" not in text:
        lines = text.split("\r")
    else:
        if "\r" not in text:
            flags.append("LF_TERMINATORS")
        elif text.count("\r\n") == text.count("\n") == text.count("\r"):
            flags.append("CRLF_TERMINATORS")
        else:
            flags.append("MIXED_TERMINATORS")
        # CR, LF and CRLF all end a line. A CRLF split twice leaves an empty line between, and
        # empty lines are skipped below: the segments of a regex split on \r\n|\r|\n, without
        # the regex engine (which took a seventh of tokenizing on the benchmark day).
        lines = text.replace("\n", "\r").split("\r")
    segs: list[str] = []
    cont: dict[int, list[str]] = {}  # segment index -> continuation lines (joined once: linear time)
    for line in lines:
        if not line:
            continue
        if len(line) > 3 and line[3] == fs and line[:3].isalnum():
            segs.append(line)
        elif len(line) == 3 and (line in BARE_SEGMENT_IDS or line[0] == "Z") and line.isupper():
            segs.append(line)  # a segment with no fields at all
        elif segs and line.strip() and not (0 < line.find(fs) < 3):
            cont.setdefault(len(segs) - 1, [segs[-1]]).append(line)
        elif line.strip():
            segs.append(line)  # junk before any segment; kept so nothing is lost
            flags.append("MALFORMED_SEGMENT")
    if cont:
        flags.append("CONTINUATION_LINE")
        for i, parts in cont.items():
            segs[i] = "\n".join(parts)
    return segs, flags


class Message:
    """A tokenized message. ``segments`` are lists of raw (still escaped) field strings.

    For MSH, element 0 is ``"MSH"`` and element n is MSH-(n+1), because MSH-1 is the separator
    itself; for other segments element n is SEG-n. Use ``field(seg, n)`` to avoid that trap.
    """

    __slots__ = ("raw", "text", "delims", "codec", "segments", "index", "flags", "issues")

    def __init__(self, raw: bytes, text: str, delims: Delimiters, codec: str,
                 segments: list[list[str]], flags: list[str], issues: list[ParseIssue]):
        self.raw = raw
        self.text = text
        self.delims = delims
        self.codec = codec
        self.segments = segments
        self.flags = flags
        self.issues = issues
        idx: dict[str, list[list[str]]] = {}
        for s in segments:
            sid = s[0]
            lst = idx.get(sid)
            if lst is None:
                idx[sid] = [s]
            else:
                lst.append(s)
        self.index = idx

    def first(self, sid: str) -> list[str] | None:
        lst = self.index.get(sid)
        return lst[0] if lst else None

    def all(self, sid: str) -> list[list[str]]:
        return self.index.get(sid, [])

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def to_er7(self, terminator: str = "\r") -> str:
        """Serialize back to ER7 text with the message's own delimiters (lossless for the tokens)."""
        fs = self.delims.field
        return terminator.join(fs.join(s) for s in self.segments) + terminator


def field(seg: list[str] | None, n: int) -> str:
    """SEG-n of a tokenized segment ('' when absent), handling MSH's off-by-one."""
    if seg is None:
        return ""
    i = n - 1 if seg[0] == "MSH" else n
    return seg[i] if i < len(seg) else ""


def components(value: str, d: Delimiters) -> list[str]:
    """Components of the first repetition of a field value."""
    if d.repetition in value:
        value = value.split(d.repetition, 1)[0]
    return value.split(d.component)


def parse(raw: bytes, facility_charset: str | None = None) -> Message:
    """Tokenize one message unit. Never raises: problems become ``Message.issues``."""
    flags: list[str] = []
    issues: list[ParseIssue] = []
    body = raw
    if body[:3] == BOM:
        body = body[3:]
        flags.append("BOM_STRIPPED")
    if body[:3] != b"MSH":
        stripped = body.lstrip(b" \t\r\n\x00")
        if stripped[:3] == BOM:
            stripped = stripped[3:]
        if stripped is not body and stripped[:3] == b"MSH":
            flags.append("LEADING_WHITESPACE_STRIPPED")
            body = stripped
    if b"\x00" in body:
        head = body.strip(b"\x00")[:256]
        if head.count(b"\x00") * 4 >= len(head):
            # A NUL between most characters is UTF-16/32 (bad inputs 40 and 66), not stray bytes
            # (nor zero padding after the message, left out of the measure): with them removed,
            # every letter beyond ASCII would load as other letters.
            issues.append(ParseIssue("UNSUPPORTED_CHARSET", "MSH-18", "message is UTF-16/32 (NUL bytes between "
                                     "characters); HL7 v2 needs a single-byte charset or UTF-8", 203))
        body = body.replace(b"\x00", b"")
        flags.append("NUL_BYTES_REMOVED")
    has_msh = body[:3] == b"MSH"
    if has_msh:
        eol = len(body)
        for t in (b"\r", b"\n"):
            p = body.find(t)
            if p != -1 and p < eol:
                eol = p
        header = body[:eol].decode("latin-1")
        delims, d_issues = read_delimiters(header)
        issues.extend(d_issues)
        msh = header.split(delims.field)
        msh18 = msh[17] if len(msh) > 17 else ""
        if msh18:
            msh18 = msh18.split(delims.repetition, 1)[0].split(delims.component, 1)[0].strip()
    else:
        delims, msh18 = DEFAULT_DELIMITERS, ""
        issues.append(ParseIssue("MISSING_MSH", "MSH", "message does not start with an MSH segment", 100))
    try:
        text, codec, cflags = _charset.decode(body, msh18 or None, facility_charset)
    except _charset.UnsupportedCharset:
        issues.append(ParseIssue("UNSUPPORTED_CHARSET", "MSH-18", "declared character set is not supported (multi-byte with NUL)", 203))
        text, codec, cflags = body.decode("latin-1"), "latin-1", []
    flags.extend(cflags)
    seg_strings, sflags = split_segments(text, delims.field)
    flags.extend(sflags)
    fs = delims.field
    segments = [s.split(fs) for s in seg_strings]
    return Message(raw, text, delims, codec, segments, flags, issues)


# ---------------------------------------------------------------------------------------------
# Streams of bytes -> units
_START = re.compile(rb"[\r\n](?=(?:\xef\xbb\xbf)?(?:MSH|FHS|BHS|BTS|FTS)[^A-Za-z0-9\r\n])")
# A unit carried over from the previous read starts the buffer, BOM included (as _START allows).
_HEAD = re.compile(rb"(?:\xef\xbb\xbf)?(?:MSH|FHS|BHS|BTS|FTS)[^A-Za-z0-9\r\n]")


def leading_junk(buf: bytes, eof: bool) -> int | None:
    """How many bytes of whitespace and BOMs a stream starting with ``buf`` has before its first
    unit (``iter_units`` skips them; ``extract.has_batch_segments`` looks past them), or None
    while that is not known yet: ``buf`` is all junk so far, or ends inside what may be a BOM,
    and the stream has more (not ``eof``)."""
    lead = len(buf) - len(buf.lstrip(b" \t\r\n"))
    while buf[lead:lead + 3] == BOM:
        lead += 3
        lead += len(buf[lead:]) - len(buf[lead:].lstrip(b" \t\r\n"))
    rest = buf[lead:]
    if not eof and (not rest or (len(rest) < 3 and BOM.startswith(rest))):
        return None
    return lead


def _kind(buf: bytes, a: int) -> str:
    head = buf[a + 3:a + 6] if buf[a:a + 3] == BOM else buf[a:a + 3]
    return head.decode("ascii")


_HEADS = (b"MSH", b"FHS", b"BHS", b"BTS", b"FTS")
_NOT_AFTER_HEAD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789\r\n")


def _starts(buf: bytes, heads: tuple[bytes, ...] = _HEADS) -> list[int]:
    """Offsets where a message or batch segment begins (at the buffer start or after CR/LF,
    optionally behind a BOM). Same matches as ``_START`` but found with ``bytes.find``, which
    runs at memory speed; a regex scan tries its pattern at every CR/LF. ``heads``: the segment
    names to look for (only MSH in a file known to hold no batch segments: each other name costs
    a scan of the whole buffer)."""
    out = []
    n = len(buf)
    for h in heads:
        i = buf.find(h, 1)
        while i != -1:
            if i + 3 < n and buf[i + 3] not in _NOT_AFTER_HEAD:
                j = i - 3 if i >= 4 and buf[i - 3:i] == BOM else i
                if buf[j - 1] in (10, 13):
                    out.append(j)
            i = buf.find(h, i + 1)
    out.sort()
    if _HEAD.match(buf):
        out.insert(0, 0)
    return out


class Unit(NamedTuple):
    kind: str  # "MSH" | "FHS" | "BHS" | "BTS" | "FTS" | "FRAGMENT"
    raw: bytes
    offset: int  # byte offset in the stream


def iter_units(stream: BinaryIO, chunk_size: int = CHUNK, batch_segments: bool = True) -> Iterator[Unit]:
    """Split a byte stream into units without decoding. Memory is bounded by the largest unit.

    ``batch_segments=False`` is for a stream known to have no line starting with FHS, BHS, BTS
    or FTS (``extract.has_batch_segments``): only MSH then starts a unit."""
    heads = _HEADS if batch_segments else (b"MSH",)
    buf = b""
    base = 0  # stream offset of buf[0]
    first = True
    while True:
        chunk = stream.read(chunk_size)
        eof = not chunk
        if chunk:
            buf += chunk
        if first:
            # Strip leading whitespace and BOMs, however the stream happens to be chunked.
            lead = leading_junk(buf, eof)
            if lead is None:
                continue  # read more before deciding
            if lead:
                buf = buf[lead:]
                base += lead
            first = False
        starts = _starts(buf, heads)
        if not eof:
            if not starts:
                if len(buf) > MAX_UNIT_BYTES:
                    yield Unit("FRAGMENT", buf, base)
                    base += len(buf)
                    buf = b""
                continue
            if starts[0] > 0:
                yield Unit("FRAGMENT", buf[:starts[0]], base)
            for a, b in zip(starts, starts[1:]):
                yield Unit(_kind(buf, a), buf[a:b], base + a)
            last = starts[-1]
            base += last
            buf = buf[last:]
            if len(buf) > MAX_UNIT_BYTES:
                yield Unit("FRAGMENT", buf, base)
                base += len(buf)
                buf = b""
            continue
        # End of stream: everything left is complete.
        if not buf.strip():
            return
        if not starts:
            yield Unit("FRAGMENT", buf, base)
            return
        if starts[0] > 0:
            yield Unit("FRAGMENT", buf[:starts[0]], base)
        bounds = starts + [len(buf)]
        for a, b in zip(bounds, bounds[1:]):
            yield Unit(_kind(buf, a), buf[a:b], base + a)
        return


@dataclass
class RawMessage:
    """One message's exact bytes and where it came from."""

    raw: bytes
    index: int  # 0-based position among the messages (and fragments) of the file
    offset: int
    batch: int | None = None  # 1-based batch number inside a batch file
    fragment: bool = False  # bytes that do not start with MSH


@dataclass
class Envelope:
    """Batch bookkeeping for one file; ``issues`` is empty when every count reconciles."""

    has_fhs: bool = False
    batches: int = 0
    messages: int = 0
    issues: list[tuple[int | None, ParseIssue]] = dc_field(default_factory=list)


def _count(unit: bytes) -> int | None:
    """Numeric value of BTS-1 / FTS-1 (None if absent or not a number)."""
    line = re.split(rb"[\r\n]", unit, maxsplit=1)[0].decode("latin-1")
    parts = line.split(line[3]) if len(line) > 3 else []
    if len(parts) > 1 and parts[1].strip().isdigit():
        return int(parts[1].strip())
    return None


_FIRST_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)*")


def _split_envelopes(units: Iterator[Unit]) -> Iterator[Unit]:
    """A batch segment unit runs until the next MSH; anything after its own line has no message
    header and becomes a separate fragment instead of being ignored."""
    for u in units:
        if u.kind in ("FHS", "BHS", "BTS", "FTS"):
            first = _FIRST_LINE.match(u.raw)  # matches every input (it may match nothing)
            head = first.end() if first is not None else 0
            if head < len(u.raw) and u.raw[head:].strip():
                yield u._replace(raw=u.raw[:head])
                yield Unit("FRAGMENT", u.raw[head:], u.offset + head)
                continue
        yield u


def iter_file(stream: BinaryIO, envelope: Envelope | None = None, chunk_size: int = CHUNK,
              batch_segments: bool = True) -> Iterator[RawMessage]:
    """Messages of a file (plain, several concatenated, or FHS/BHS batches), in order.

    Pass an ``Envelope`` to receive the batch reconciliation once the generator is exhausted;
    nothing is ever dropped: stray batch segments become issues, stray bytes become fragments.
    """
    env = envelope if envelope is not None else Envelope()
    index = 0
    batch: int | None = None
    in_batch_count = 0
    fts_seen = False
    outside = 0  # messages before, between or after the batches
    for unit in _split_envelopes(iter_units(stream, chunk_size, batch_segments)):
        kind = unit.kind
        if kind == "MSH" or kind == "FRAGMENT":
            env.messages += 1
            if batch is not None:
                in_batch_count += 1
            elif kind == "MSH":  # junk after FTS (a Ctrl-Z, zero padding) is a fragment of its own
                outside += 1
            yield RawMessage(unit.raw, index, unit.offset, batch, kind == "FRAGMENT")
            index += 1
        elif kind == "FHS":
            if env.has_fhs or env.batches:
                env.issues.append((None, ParseIssue("BATCH_STRUCTURE", "FHS", "FHS not at the start of the file", 100)))
            env.has_fhs = True
        elif kind == "BHS":
            if batch is not None:
                env.issues.append((batch, ParseIssue("BATCH_STRUCTURE", "BTS", "batch without BTS trailer", 100)))
            env.batches += 1
            batch = env.batches
            in_batch_count = 0
        elif kind == "BTS":
            declared = _count(unit.raw)
            if batch is None:
                env.issues.append((None, ParseIssue("BATCH_STRUCTURE", "BTS", "BTS without BHS", 100)))
            elif declared is not None and declared != in_batch_count:
                env.issues.append((batch, ParseIssue(
                    "BATCH_COUNT_MISMATCH", "BTS-1",
                    f"BTS-1 declares {declared} messages, batch holds {in_batch_count}", 207)))
            batch = None
        elif kind == "FTS":
            fts_seen = True
            if not env.has_fhs:
                env.issues.append((None, ParseIssue("BATCH_STRUCTURE", "FTS", "FTS without FHS", 100)))
            declared = _count(unit.raw)
            if batch is not None:
                env.issues.append((batch, ParseIssue("BATCH_STRUCTURE", "BTS", "batch without BTS trailer", 100)))
                batch = None
            if declared is not None and declared != env.batches:
                env.issues.append((None, ParseIssue(
                    "BATCH_COUNT_MISMATCH", "FTS-1",
                    f"FTS-1 declares {declared} batches, file holds {env.batches}", 207)))
    if batch is not None:
        env.issues.append((batch, ParseIssue("BATCH_STRUCTURE", "BTS", "batch without BTS trailer", 100)))
    if env.batches and outside:
        # HL7 lets a file go without BHS/BTS, but one that has them and holds a message outside
        # them was cut or pasted together (bad input 60): the counts no longer vouch for it.
        env.issues.append((None, ParseIssue("BATCH_STRUCTURE", "MSH", f"{outside} message(s) outside the "
                                            "file's batches", 100)))
    if env.has_fhs and not fts_seen:
        env.issues.append((None, ParseIssue("BATCH_STRUCTURE", "FTS", "FHS without FTS trailer", 100)))
