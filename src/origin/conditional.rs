//! Conditional and range GETs (RFC 9110 §13, §14) and content coding (§12.5.3): the request's
//! validators and `Range` read once, the stored object's entity tag and dates, and byte ranges
//! sliced from the stored chunks without copying.

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use crate::store::{Cacheability, Object};

/// Whether an `Accept-Encoding` field admits gzip (RFC 9110 §12.5.3): listed, or covered by `*`,
/// with a weight above zero.
pub(super) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for member in
        headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','))
    {
        let mut parts = member.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let weight = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(weight > 0.0),
            "*" => any = Some(weight > 0.0),
            _ => {}
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// The request fields that make answering a stored object conditional or partial, copied out of
/// the request so that a held request does not borrow it.
#[derive(Debug, Default, Clone)]
pub(super) struct Conditions {
    /// Every `If-None-Match` field line: the field is a list and may be split (RFC 9110 §5.3).
    pub(super) if_none_match: Vec<HeaderValue>,
    pub(super) if_modified_since: Option<HeaderValue>,
    pub(super) range: Option<HeaderValue>,
    pub(super) if_range: Option<HeaderValue>,
    /// `Accept-Encoding` admits gzip.
    pub(super) gzip: bool,
}

impl Conditions {
    pub(super) fn of(headers: &HeaderMap) -> Self {
        // The other fields hold a single member; more than one line makes them invalid, and an
        // invalid one is ignored (RFC 9110 §13.1.3, §13.1.5, §14.2).
        let single = |name: header::HeaderName| {
            let mut lines = headers.get_all(name).into_iter();
            match (lines.next(), lines.next()) {
                (Some(v), None) => Some(v.clone()),
                _ => None,
            }
        };
        Self {
            if_none_match: headers.get_all(header::IF_NONE_MATCH).iter().cloned().collect(),
            if_modified_since: single(header::IF_MODIFIED_SINCE),
            range: single(header::RANGE),
            if_range: single(header::IF_RANGE),
            gzip: accepts_gzip(headers),
        }
    }

    /// Whether a GET or HEAD of `object` is answered 304 (RFC 9110 §13.2.2 steps 3 and 4).
    pub(super) fn not_modified(&self, object: &Object, etag: &str) -> bool {
        if !self.if_none_match.is_empty() {
            return self.if_none_match.iter().filter_map(|v| v.to_str().ok()).any(|v| none_match(v, etag));
        }
        let Some(since) = self.if_modified_since.as_ref().and_then(|v| v.to_str().ok()).and_then(parse_http_date)
        else {
            return false;
        };
        let stored = unix_seconds(object.stored_at);
        match object.cache {
            Cacheability::Immutable => stored <= since,
            // `Last-Modified` has one-second resolution and a playlist changes several times a
            // second, so a playlist stored within the very second the client names may differ
            // from the copy it has: only a later second proves it unchanged.
            Cacheability::Live | Cacheability::Refreshed(_) => stored < since,
        }
    }

    /// The part of an object of `len` bytes a GET asks for (RFC 9110 §14.2). `If-Range` that does
    /// not match means the whole object (RFC 9110 §13.1.5).
    pub(super) fn range(&self, object: &Object, etag: &str, len: u64) -> Ranged {
        let Some(range) = self.range.as_ref().and_then(|v| v.to_str().ok()) else {
            return Ranged::Whole;
        };
        if let Some(validator) = &self.if_range
            && !validator.to_str().is_ok_and(|v| if_range_matches(v, object, etag))
        {
            return Ranged::Whole;
        }
        byte_range(range, len)
    }
}

/// What a `Range` request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ranged {
    /// 200 with all of it: no range, a range this origin ignores, or several ranges (RFC 9110
    /// §14.2 lets a server ignore `Range`; serving whole segments spares a multipart body).
    Whole,
    /// 206 with bytes `first..=last`.
    Bytes { first: u64, last: u64 },
    /// 416: no byte of the object is in the range.
    Unsatisfiable,
}

/// The bytes `start..end` of an object, as slices of its chunks: only the chunks at either end
/// are cut, and cutting a `Bytes` shares its buffer.
pub(super) fn slice_chunks(chunks: &[Bytes], start: u64, end: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for chunk in chunks {
        let (from, to) = (offset, offset + chunk.len() as u64);
        offset = to;
        if to <= start {
            continue;
        }
        if from >= end {
            break;
        }
        let cut_from = (start.saturating_sub(from)) as usize;
        let cut_to = (end.min(to) - from) as usize;
        out.push(if cut_from == 0 && cut_to == chunk.len() { chunk.clone() } else { chunk.slice(cut_from..cut_to) });
    }
    out
}

/// A `Range` value against an object of `len` bytes (RFC 9110 §14.1.1, §14.1.2).
pub(super) fn byte_range(value: &str, len: u64) -> Ranged {
    let Some((unit, set)) = value.split_once('=') else {
        return Ranged::Whole;
    };
    // Range units are case-insensitive (RFC 9110 §14.1); any other unit is ignored (§14.2).
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranged::Whole;
    }
    // A list (RFC 9110 §5.6.1): empty members and whitespace around commas are allowed.
    let mut specs = set.split(',').map(|s| s.trim_matches([' ', '\t'])).filter(|s| !s.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else {
        return Ranged::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    // A position too large for u64 is still a valid one, and lies past any object's end.
    let position = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (position(first), position(last)) {
        // suffix-range: the last `n` bytes; none of zero bytes satisfies (RFC 9110 §14.1.1).
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                Ranged::Unsatisfiable
            } else {
                Ranged::Bytes { first: len.saturating_sub(n), last: len - 1 }
            }
        }
        (Some(first), None) if last.is_empty() => {
            if first >= len {
                Ranged::Unsatisfiable
            } else {
                Ranged::Bytes { first, last: len - 1 }
            }
        }
        // An int-range whose last position is before its first is invalid: ignored.
        (Some(first), Some(last)) if first <= last => {
            if first >= len {
                Ranged::Unsatisfiable
            } else {
                Ranged::Bytes { first, last: last.min(len - 1) }
            }
        }
        _ => Ranged::Whole,
    }
}

/// The strong entity-tag of an object (RFC 9110 §8.8.3): its length and the digest of its bytes,
/// so it changes whenever the bytes do.
pub(super) fn entity_tag(object: &Object) -> String {
    format!("\"{:x}-{:016x}\"", object.len(), object.digest)
}

/// Whether an `If-None-Match` value matches `etag` by the weak comparison (RFC 9110 §13.1.2,
/// §8.8.3.2): `*`, or any listed tag whose opaque part equals ours, `W/` or not.
pub(super) fn none_match(value: &str, etag: &str) -> bool {
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        if rest.starts_with('*') {
            return true;
        }
        let Some((_weak, tag, after)) = split_entity_tag(rest) else {
            // Not an entity-tag list: the condition is ignored rather than guessed at.
            return false;
        };
        if tag == etag {
            return true;
        }
        rest = after;
    }
}

/// The first entity-tag of `s` (RFC 9110 §8.8.3): whether it is weak, the opaque-tag with its
/// quotes, and what follows it.
pub(super) fn split_entity_tag(s: &str) -> Option<(bool, &str, &str)> {
    let (weak, s) = match s.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let end = s.strip_prefix('"')?.find('"')? + 1;
    Some((weak, &s[..=end], &s[end + 1..]))
}

/// Whether `If-Range` lets a range be served (RFC 9110 §13.1.5): a strong entity-tag equal to
/// ours, or exactly the object's `Last-Modified`. That date is a strong validator here because
/// only immutable objects, whose names are never reused, answer ranges.
pub(super) fn if_range_matches(value: &str, object: &Object, etag: &str) -> bool {
    let value = value.trim_matches([' ', '\t']);
    if value.starts_with('"') || value.starts_with("W/") {
        return matches!(split_entity_tag(value), Some((false, tag, "")) if tag == etag);
    }
    object.cache == Cacheability::Immutable && parse_http_date(value) == Some(unix_seconds(object.stored_at))
}

/// IMF-fixdate (RFC 9110 §5.6.7), the only form an HTTP date may be sent in.
pub(super) const IMF_FIXDATE: &[BorrowedFormatItem<'_>] =
    format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");

pub(super) fn http_date(at: SystemTime) -> String {
    OffsetDateTime::from(at).format(IMF_FIXDATE).unwrap_or_default()
}

pub(super) fn unix_seconds(at: SystemTime) -> i64 {
    OffsetDateTime::from(at).unix_timestamp()
}

/// An HTTP-date in any of its three forms, which a recipient must all accept (RFC 9110 §5.6.7):
/// `Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT`, `Sun Nov  6 08:49:37 1994`.
/// Seconds since the Unix epoch; `None` for anything else.
pub(super) fn parse_http_date(value: &str) -> Option<i64> {
    let fields: Vec<&str> = value.split([' ', ',', '-']).filter(|f| !f.is_empty()).collect();
    let (day, month, year, clock) = match fields[..] {
        [_weekday, day, month, year, clock, "GMT"] => (day, month, year, clock),
        [_weekday, month, day, clock, year] => (day, month, year, clock),
        _ => return None,
    };
    let number = |s: &str, digits: std::ops::RangeInclusive<usize>| {
        (digits.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u16>().ok()).flatten()
    };
    let mut year = i32::from(number(year, 2..=4)?);
    if year < 100 {
        // rfc850-date: a two-digit year more than 50 years ahead is in the previous century.
        let now = OffsetDateTime::now_utc().year();
        year += now - now % 100;
        if year > now + 50 {
            year -= 100;
        }
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == month)?;
    let month = time::Month::try_from(u8::try_from(month + 1).ok()?).ok()?;
    let day = u8::try_from(number(day, 1..=2)?).ok()?;
    let mut clock = clock.split(':');
    let (Some(h), Some(m), Some(sec), None) = (clock.next(), clock.next(), clock.next(), clock.next()) else {
        return None;
    };
    let part = |s: &str| number(s, 2..=2).and_then(|n| u8::try_from(n).ok());
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms(part(h)?, part(m)?, part(sec)?).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc().unix_timestamp())
}
