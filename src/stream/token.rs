//! Resume tokens (docs/stream.md, section 7): where a receiver stands in a stream it did not
//! finish, as a short printable string. A token only names a position; the sender regenerates
//! the stream from its own arguments and checks the token's chain hash at that position, and
//! the receiver checks the resumed stream against the token it stored itself, so an edited or
//! forged token can make either side refuse, never apply something else.

use base64::Engine as _;

use super::crc;

const PREFIX: &str = "rs1.";
const BYTES: usize = 16 + 16 + 8 + 8 + 8 + 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeToken {
    pub stream_id: [u8; 16],
    pub target_id: [u8; 16],
    /// The stream header's `created` (part of the header the chain covers).
    pub created_s: u64,
    /// Offset of the CHECKPOINT everything before which the receiver has published.
    pub offset: u64,
    /// Its sequence number.
    pub seq: u64,
    /// The chain hash that CHECKPOINT carried.
    pub chain: [u8; 32],
}

impl ResumeToken {
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(BYTES + 4);
        b.extend_from_slice(&self.stream_id);
        b.extend_from_slice(&self.target_id);
        for v in [self.created_s, self.offset, self.seq] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.chain);
        let c = crc(&b);
        b.extend_from_slice(&c.to_le_bytes());
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b)
        )
    }

    pub fn decode(s: &str) -> Result<ResumeToken, String> {
        let body = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or("not a ringsync resume token (it starts with 'rs1.')")?;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "resume token damaged (not base64url)")?;
        if b.len() != BYTES + 4 {
            return Err("resume token damaged (wrong length)".into());
        }
        let (data, c) = b.split_at(BYTES);
        if crc(data).to_le_bytes() != c {
            return Err("resume token damaged (checksum mismatch)".into());
        }
        let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
        Ok(ResumeToken {
            stream_id: data[0..16].try_into().expect("16"),
            target_id: data[16..32].try_into().expect("16"),
            created_s: u64_at(32),
            offset: u64_at(40),
            seq: u64_at(48),
            chain: data[56..88].try_into().expect("32"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let t = ResumeToken {
            stream_id: [1; 16],
            target_id: [2; 16],
            created_s: 3,
            offset: 4,
            seq: 5,
            chain: [6; 32],
        };
        let s = t.encode();
        assert_eq!(ResumeToken::decode(&s).unwrap(), t);
        // Any one character changed is caught (by base64, the length or the CRC).
        for i in PREFIX.len()..s.len() {
            let mut b = s.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let edited = String::from_utf8(b).unwrap();
            assert!(ResumeToken::decode(&edited).is_err(), "edit at {i} accepted");
        }
        assert!(ResumeToken::decode("rs2.AAAA").is_err());
    }
}
