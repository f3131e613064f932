//! The one bit reader of the crate: MSB-first over a byte slice, every read bounds-checked, with
//! the Exp-Golomb codes of ITU-T H.264 §9.1. SPS parsing (`avc`) and AudioSpecificConfig parsing
//! (`aac`) read through it; each turns `None` (the data ended first, or a code does not fit)
//! into its own error naming the field.

pub struct BitReader<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// One bit.
    pub fn bit(&mut self) -> Option<u32> {
        let byte = self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    pub fn flag(&mut self) -> Option<bool> {
        Some(self.bit()? == 1)
    }

    /// u(n) for n ≤ 32.
    pub fn bits(&mut self, n: u32) -> Option<u32> {
        if n > 32 {
            return None;
        }
        let mut value: u64 = 0;
        for _ in 0..n {
            value = (value << 1) | u64::from(self.bit()?);
        }
        u32::try_from(value).ok()
    }

    /// ue(v), H.264 §9.1. Codes with more than 31 leading zeros do not fit 32 bits: `None`.
    pub fn ue(&mut self) -> Option<u32> {
        let mut leading_zeros = 0u32;
        while self.bit()? == 0 {
            leading_zeros += 1;
            if leading_zeros > 31 {
                return None;
            }
        }
        let suffix = u64::from(self.bits(leading_zeros)?);
        u32::try_from((1u64 << leading_zeros) - 1 + suffix).ok()
    }

    /// se(v), H.264 §9.1.1.
    pub fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_msb_first_and_stops_at_the_end() {
        let mut r = BitReader::new(&[0b1010_0000, 0xFF]);
        assert_eq!((r.bit(), r.flag(), r.bits(2)), (Some(1), Some(false), Some(0b10)));
        assert_eq!(r.bits(12), Some(0x0FF));
        assert_eq!(r.bit(), None, "past the end");
        assert_eq!(BitReader::new(&[0xFF; 8]).bits(33), None, "wider than 32 bits");
        assert_eq!(BitReader::new(&[0xAB, 0xCD, 0xEF, 0x12]).bits(32), Some(0xABCD_EF12));
    }

    #[test]
    fn exp_golomb_codes_of_h264_9_1() {
        // 1 → 0; 010 → 1; 011 → 2; 00100 → 3; 00111 → 6: packed as 1 010 011 00100 00111 0…
        let mut r = BitReader::new(&[0b1010_0110, 0b0100_0011, 0b1000_0000]);
        assert_eq!([r.ue(), r.ue(), r.ue(), r.ue(), r.ue()], [Some(0), Some(1), Some(2), Some(3), Some(6)]);
        // se(v): k = 1, 2, 3, 4 → 1, -1, 2, -2.
        let mut r = BitReader::new(&[0b0100_1100, 0b1000_0101, 0b0000_0000]);
        assert_eq!([r.se(), r.se(), r.se(), r.se()], [Some(1), Some(-1), Some(2), Some(-2)]);
        // 32 leading zeros do not fit; a code cut short is None.
        assert_eq!(BitReader::new(&[0, 0, 0, 0, 0x80]).ue(), None);
        assert_eq!(BitReader::new(&[0b0000_0001]).ue(), None);
        assert_eq!(BitReader::new(&[0b0001_0000]).ue(), Some(7));
    }
}
