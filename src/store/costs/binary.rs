//! Cost rows in Postgres's binary `COPY` format, written straight from the API's text: no
//! statement to parse, no array to unpack, no text to convert into a time or a number.

use chrono::{DateTime, Utc};

/// The signature, flags and header extension length that open a binary `COPY` stream.
pub(super) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The field count of -1 that ends it.
pub(super) const TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// Seconds from the Unix epoch to Postgres's, 2000-01-01 UTC.
const POSTGRES_EPOCH: i64 = 946_684_800;

/// The largest display scale a `numeric` holds.
const MAX_DSCALE: i64 = 0x3fff;

/// The most base-10000 digits sent in one binary `numeric`; longer values take the text path.
const MAX_NUMERIC_DIGITS: i64 = 3_000;

/// The `numeric` sign words.
const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;

/// A decimal's text taken apart: `-?int(.frac)?(e±exp)?`, as the client checked it.
struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    exponent: i64,
}

impl<'a> Decimal<'a> {
    fn parse(text: &'a str) -> Option<Decimal<'a>> {
        let bytes = text.as_bytes();
        let (negative, rest) = match bytes.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, bytes),
        };
        let (mantissa, exponent) = match rest.iter().position(|b| matches!(b, b'e' | b'E')) {
            Some(at) => {
                let exponent = std::str::from_utf8(rest.get(at + 1..)?).ok()?;
                let exponent = exponent.strip_prefix('+').unwrap_or(exponent);
                (rest.get(..at)?, exponent.parse::<i64>().ok()?)
            }
            None => (rest, 0),
        };
        let (int, frac) = match mantissa.iter().position(|&b| b == b'.') {
            Some(at) => (mantissa.get(..at)?, mantissa.get(at + 1..)?),
            None => (mantissa, &[][..]),
        };
        let digits = int.iter().chain(frac);
        (!int.is_empty() && digits.clone().all(u8::is_ascii_digit)).then_some(Decimal {
            negative,
            int,
            frac,
            exponent,
        })
    }

    /// The digits, integer part then fraction.
    fn digits(&self) -> impl DoubleEndedIterator<Item = u8> + Clone + '_ {
        self.int.iter().chain(self.frac).map(|b| b - b'0')
    }
}

/// What a binary `numeric` says before its digits.
struct NumericHead {
    negative: bool,
    /// Power of ten of the first significant digit and of the last one.
    first: i64,
    last: i64,
    /// Significant digits to skip at the front (leading zeros) and to take.
    skip: usize,
    take: usize,
}

impl NumericHead {
    /// `None` for zero.
    fn of(decimal: &Decimal<'_>) -> Option<NumericHead> {
        let skip = decimal.digits().position(|d| d != 0)?;
        let count = decimal.int.len() + decimal.frac.len();
        let trailing = decimal.digits().rev().position(|d| d != 0)?;
        let take = count - skip - trailing;
        let int = i64::try_from(decimal.int.len()).ok()?;
        let first = (int - 1 - i64::try_from(skip).ok()?).checked_add(decimal.exponent)?;
        let last = first.checked_sub(i64::try_from(take).ok()? - 1)?;
        Some(NumericHead {
            negative: decimal.negative,
            first,
            last,
            skip,
            take,
        })
    }

    fn weight(&self) -> i64 {
        self.first.div_euclid(4)
    }

    fn ndigits(&self) -> i64 {
        self.weight() - self.last.div_euclid(4) + 1
    }

    fn dscale(&self) -> i64 {
        (-self.last).max(0)
    }

    fn fits(&self) -> bool {
        let limit = i64::from(i16::MAX);
        self.dscale() <= MAX_DSCALE
            && self.ndigits() <= MAX_NUMERIC_DIGITS
            && (-limit..=limit).contains(&self.weight())
            && (-limit..=limit).contains(&self.last.div_euclid(4))
    }
}

/// Whether `text`, a checked decimal, fits a binary `numeric` (else the text path parses it).
pub(super) fn numeric_fits(text: &str) -> bool {
    Decimal::parse(text).is_some_and(|decimal| NumericHead::of(&decimal).is_none_or(|h| h.fits()))
}

/// Appends one row's fields in binary `COPY` form; each writer appends one field.
pub(super) struct Row<'b>(&'b mut Vec<u8>);

impl<'b> Row<'b> {
    pub(super) fn start(buffer: &'b mut Vec<u8>, fields: i16) -> Row<'b> {
        buffer.extend_from_slice(&fields.to_be_bytes());
        Row(buffer)
    }

    fn length(&mut self, length: usize) {
        // Fields are a page's pieces, far below 2 GiB; a longer one could not have arrived.
        let length = i32::try_from(length).unwrap_or(i32::MAX);
        self.0.extend_from_slice(&length.to_be_bytes());
    }

    fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// A `timestamptz`: microseconds since 2000-01-01 UTC.
    pub(super) fn time(&mut self, at: DateTime<Utc>) {
        let micros = (at.timestamp() - POSTGRES_EPOCH)
            .saturating_mul(1_000_000)
            .saturating_add(i64::from(at.timestamp_subsec_micros()));
        self.length(8);
        self.0.extend_from_slice(&micros.to_be_bytes());
    }

    pub(super) fn bigint(&mut self, value: i64) {
        self.length(8);
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    pub(super) fn text(&mut self, text: Option<&str>) {
        match text {
            None => self.null(),
            Some(text) => {
                self.length(text.len());
                self.0.extend_from_slice(text.as_bytes());
            }
        }
    }

    /// A `jsonb`: format version 1, then the JSON text (which Postgres parses as it would text).
    pub(super) fn jsonb(&mut self, json: &str) {
        self.length(1 + json.len());
        self.0.push(1);
        self.0.extend_from_slice(json.as_bytes());
    }

    /// A `numeric` from a decimal's text, at the smallest scale that holds its value (what
    /// `trim_scale` gives): base-10000 digits around the decimal point. `false`, with nothing
    /// written, for a text `numeric_fits` refuses.
    #[must_use]
    pub(super) fn numeric(&mut self, text: &str) -> bool {
        let Some(decimal) = Decimal::parse(text) else {
            return false;
        };
        let Some(head) = NumericHead::of(&decimal) else {
            // Zero, whatever its sign or scale: no digits, weight 0, positive, scale 0.
            self.length(8);
            self.0.extend_from_slice(&[0; 8]);
            return true;
        };
        let (true, Ok(ndigits), Ok(weight), Ok(dscale)) = (
            head.fits(),
            u16::try_from(head.ndigits()),
            i16::try_from(head.weight()),
            u16::try_from(head.dscale()),
        ) else {
            return false;
        };
        self.length(8 + 2 * usize::from(ndigits));
        self.0.extend_from_slice(&ndigits.to_be_bytes());
        self.0.extend_from_slice(&weight.to_be_bytes());
        let sign = if head.negative {
            NUMERIC_NEGATIVE
        } else {
            NUMERIC_POSITIVE
        };
        self.0.extend_from_slice(&sign.to_be_bytes());
        self.0.extend_from_slice(&dscale.to_be_bytes());
        // A digit's power of ten gives its group (the floor of its quarter) and its place there.
        let mut group = head.weight();
        let mut value = 0u16;
        let mut power = head.first;
        for digit in decimal.digits().skip(head.skip).take(head.take) {
            let own = power.div_euclid(4);
            while own < group {
                self.0.extend_from_slice(&value.to_be_bytes());
                value = 0;
                group -= 1;
            }
            let place = match power - 4 * own {
                0 => 1,
                1 => 10,
                2 => 100,
                _ => 1000,
            };
            value += u16::from(digit) * place;
            power -= 1;
        }
        self.0.extend_from_slice(&value.to_be_bytes());
        true
    }

    /// A nullable `numeric`; `false`, with nothing written, as `numeric` says.
    #[must_use]
    pub(super) fn numeric_or_null(&mut self, text: Option<&str>) -> bool {
        match text {
            None => {
                self.null();
                true
            }
            Some(text) => self.numeric(text),
        }
    }
}
