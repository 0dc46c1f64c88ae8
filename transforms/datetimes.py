"""HL7 v2 date/time (DT, TS, DTM) parsing without inventing precision.

Input: an HL7 DTM string such as ``20261120``, ``202611200830+0000`` or ``2024`` (TS values may carry a
second "degree of precision" component; pass only the first). Output: an ISO 8601 string that keeps
exactly the precision sent (``2024`` stays ``2024``, ``202403`` becomes ``2024-03``) and keeps the
offset when one was sent. ``to_utc`` turns such a value into a naive UTC timestamp for the warehouse,
reading values without offset in the facility's zone (Togo: UTC+0, no DST).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class InvalidDate(ValueError):
    """The value is not a valid HL7 date/time. The message text never contains the value itself."""


def _digits(s: str) -> bool:
    # str.isdigit() accepts "²" and full-width digits; HL7 dates are ASCII.
    return s.isascii() and s.isdigit()


def _leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def parse_dtm(value: str) -> str:
    """Return the ISO 8601 form of an HL7 DTM, or raise InvalidDate."""
    # Hot path: a day of traffic repeats the same timestamps (MSH-7, EVN-2, OBX-14) many times.
    cached = _CACHE.get(value)
    if cached is not None:
        return cached
    out = _parse_slow(value)
    if len(_CACHE) > 20_000:
        _CACHE.clear()
    _CACHE[value] = out
    return out


_CACHE: dict[str, str] = {}


_DAYS_TEXT = ("31", "29", "31", "30", "31", "30", "31", "31", "30", "31", "30", "31")


def _parse_slow(value: str) -> str:
    v = value
    if len(v) == 14 and v.isdigit() and v.isascii():
        # The common full-second form, checked on the digit pairs as text (same rules as below;
        # two-digit strings compare like their numbers). A day has more distinct seconds than
        # the cache holds, so this path is hot.
        mo, d = v[4:6], v[6:8]
        if ("1000" <= v[:4] <= "2999" and "01" <= mo <= "12" and "01" <= d <= _DAYS_TEXT[int(mo) - 1]
                and v[8:10] <= "23" and v[10:12] <= "59" and v[12:14] <= "59"
                and not (mo == "02" and d == "29" and not _leap(int(v[:4])))):
            return f"{v[:4]}-{mo}-{d}T{v[8:10]}:{v[10:12]}:{v[12:14]}"
    s = value.strip()
    offset = ""
    for sign in ("+", "-"):
        i = s.find(sign, 4)
        if i != -1:
            s, off = s[:i], s[i:]
            if len(off) != 5 or not _digits(off[1:]) or int(off[1:3]) > 14 or int(off[3:]) > 59:
                raise InvalidDate("bad timezone offset")
            offset = f"{off[:3]}:{off[3:]}"
            break
    frac = ""
    if "." in s:
        s, frac = s.split(".", 1)
        if not _digits(frac) or len(frac) > 6 or len(s) != 14:
            raise InvalidDate("bad fractional seconds")
    n = len(s)
    if n not in (4, 6, 8, 10, 12, 14) or not _digits(s):
        raise InvalidDate("bad length or characters")
    y = int(s[:4])
    if y < 1000 or y > 2999:
        # Year 0000 or 9999 placeholders are not dates; refuse rather than load nonsense.
        raise InvalidDate("year out of range")
    out = s[:4]
    if n >= 6:
        m = int(s[4:6])
        if not 1 <= m <= 12:
            raise InvalidDate("month out of range")
        out += "-" + s[4:6]
        if n >= 8:
            day = int(s[6:8])
            if not 1 <= day <= _DAYS[m - 1] or (m == 2 and day == 29 and not _leap(y)):
                raise InvalidDate("day out of range")
            out += "-" + s[6:8]
            if n >= 10:
                if int(s[8:10]) > 23:
                    raise InvalidDate("hour out of range")
                out += "T" + s[8:10]
                if n >= 12:
                    if int(s[10:12]) > 59:
                        raise InvalidDate("minute out of range")
                    out += ":" + s[10:12]
                    if n == 14:
                        if int(s[12:14]) > 59:
                            raise InvalidDate("second out of range")
                        out += ":" + s[12:14]
                        if frac:
                            out += "." + frac
    if offset:
        if n < 10:
            return out  # an offset on a bare date carries no meaning; drop it rather than fail
        out += offset
    return out


def iso_date(value: str) -> str:
    """ISO date of a DT/DTM value truncated to the day (partial values stay partial)."""
    iso = parse_dtm(value)
    return iso[:10]


_UTC = timezone.utc
_ZONES: dict[str, ZoneInfo] = {}


def to_utc(iso: str | None, tz: str = "Africa/Lome") -> str | None:
    """Naive UTC ``YYYY-MM-DD HH:MM:SS`` for the warehouse from an ISO value made by parse_dtm.

    Partial dates are completed with the first instant of the period (documented in
    docs/warehouse.md; the original precision stays in the raw message).
    """
    if not iso:
        return None
    if len(iso) == 19 and iso[13] == ":" and iso[16] == ":" and tz in _UTC_PLUS_0:
        # parse_dtm's full-second form in a zone at UTC+0 all year (Togo): already UTC. A day
        # has more distinct seconds than the cache holds, so this is the common case.
        return iso[:10] + " " + iso[11:]
    key = (iso, tz)
    hit = _UTC_CACHE.get(key)
    if hit is not None:
        return hit
    out = _to_utc(iso, tz)
    if len(_UTC_CACHE) > 20_000:
        _UTC_CACHE.clear()
    _UTC_CACHE[key] = out
    return out


_UTC_CACHE: dict[tuple[str, str], str] = {}
# Zones at UTC+0 with no daylight saving time: local time is UTC.
_UTC_PLUS_0 = frozenset(("UTC", "Africa/Lome", "Africa/Abidjan", "Africa/Accra"))


def _to_utc(iso: str, tz: str) -> str:
    base = iso
    off = None
    if len(iso) > 10 and iso[-6] in "+-" and iso[-3] == ":":
        base, off = iso[:-6], iso[-6:]
    if len(base) == 4:
        base += "-01-01"
    elif len(base) == 7:
        base += "-01"
    if len(base) == 13:
        base += ":00"
    dt = datetime.fromisoformat(base)
    if off is not None:
        sign = 1 if off[0] == "+" else -1
        delta = timedelta(hours=int(off[1:3]), minutes=int(off[4:6]))
        dt = dt - sign * delta
    elif tz not in _UTC_PLUS_0:
        zone = _ZONES.get(tz) or _ZONES.setdefault(tz, ZoneInfo(tz))
        dt = dt.replace(tzinfo=zone).astimezone(_UTC).replace(tzinfo=None)
    # isoformat, not strftime: the same text, several times faster on the load path.
    return dt.replace(microsecond=0).isoformat(" ")
