//! Scalar value syntaxes: durations, CIDR prefixes, socket addresses, base64 keys. Each parser
//! returns a message fit for a diagnostic.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ipnet::IpNet;
use zeroize::Zeroizing;

/// Parses a duration such as `250ms`, `1s`, `2m`, `1h` or a sum such as `1m30s`
/// (units `ms`, `s`, `m`, `h`; whole numbers only).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration \"{s}\": expected a number and a unit, like \"250ms\", \"1s\", \"2m\" or \"1h\""
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("duration \"{s}\" is too large"))?;
    }
    Ok(total)
}

/// Formats a duration the way the config spells it (`250ms`, `1s`, `2m`, `24h`).
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 3_600_000 == 0 && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Decodes standard base64 (with padding, surrounding whitespace ignored) holding exactly 32
/// bytes: the format of `tandem genkey`, `tandem pubkey`, `tandem genpsk` and `wg`.
pub fn parse_key_base64(s: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let s = s.trim();
    let mut buf = Zeroizing::new([0u8; 48]);
    // 48 bytes of room: a decode that does not fit is longer than a key anyway.
    let n = match STANDARD.decode_slice(s.as_bytes(), &mut buf[..]) {
        Ok(n) => n,
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
            return Err(format!(
                "wrong key length: {} base64 characters, expected 44 (32 bytes)",
                s.len()
            ));
        }
        Err(base64::DecodeSliceError::DecodeError(_)) => {
            return Err(
                "invalid base64: expected 44 characters like the output of `tandem genkey`".into(),
            );
        }
    };
    if n != 32 {
        return Err(format!(
            "wrong key length: decodes to {n} bytes, expected 32"
        ));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&buf[..32]);
    Ok(key)
}

/// Parses a subnet prefix such as `10.10.0.0/24` or `2001:db8::/48`; host bits must be zero.
pub(crate) fn parse_subnet(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s.parse().map_err(|_| {
        format!(
            "invalid CIDR \"{s}\": expected an address and a prefix length, like \"10.10.0.0/24\""
        )
    })?;
    if net.trunc() != net {
        return Err(format!(
            "\"{s}\" has host bits set: did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Parses an interface address with its prefix length (`169.254.10.1/30`): host bits allowed.
pub(crate) fn parse_interface_address(s: &str) -> Result<IpNet, String> {
    s.parse().map_err(|_| {
        format!("invalid address \"{s}\": expected an address and a prefix length, like \"169.254.10.1/30\"")
    })
}

/// Parses `192.0.2.1:4500` or `[2001:db8::1]:4500`.
pub(crate) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("invalid socket address \"{s}\": expected IP:PORT, like \"192.0.2.1:4500\" or \"[2001:db8::1]:4500\"")
    })
}

/// Whether two prefixes share any address.
pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_accept_the_spec_spellings_and_sums() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn durations_refuse_missing_units_fractions_and_overflow() {
        for bad in ["", "10", "ms", "1.5s", "1 s", "-1s", "1d", "s1"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("18446744073709551615h").is_err());
    }

    #[test]
    fn durations_format_back_in_their_largest_whole_unit() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }

    #[test]
    fn keys_must_be_44_base64_characters_of_32_bytes() {
        let good = STANDARD.encode([7u8; 32]);
        assert_eq!(*parse_key_base64(&format!(" {good}\n")).unwrap(), [7u8; 32]);
        assert!(
            parse_key_base64("not base64!")
                .unwrap_err()
                .contains("invalid base64")
        );
        let short = STANDARD.encode([7u8; 16]);
        assert_eq!(
            parse_key_base64(&short).unwrap_err(),
            "wrong key length: decodes to 16 bytes, expected 32"
        );
        let long = STANDARD.encode([7u8; 64]);
        assert!(
            parse_key_base64(&long)
                .unwrap_err()
                .contains("wrong key length")
        );
    }

    #[test]
    fn subnets_refuse_host_bits_and_suggest_the_network() {
        assert_eq!(
            parse_subnet("10.1.0.0/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            parse_subnet("10.1.2.3/16").unwrap_err(),
            "\"10.1.2.3/16\" has host bits set: did you mean \"10.1.0.0/16\"?"
        );
        assert!(parse_subnet("10.1.0.0").is_err());
        assert!(parse_subnet("10.1.0.0/33").is_err());
        assert!(parse_subnet("2001:db8::/32").is_ok());
    }

    #[test]
    fn overlap_is_symmetric_and_family_aware() {
        let a: IpNet = "10.0.0.0/8".parse().unwrap();
        let b: IpNet = "10.20.0.0/16".parse().unwrap();
        let c: IpNet = "11.0.0.0/8".parse().unwrap();
        let v6: IpNet = "::/0".parse().unwrap();
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c));
        assert!(!overlaps(&a, &v6));
    }
}
