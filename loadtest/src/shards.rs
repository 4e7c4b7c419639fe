//! `--locality`: which shard of a nemesisdb server owns a session, so a
//! connection can keep its requests on its own shard or send every one
//! across.
//!
//! Owns: the token -> shard mix (the server's, as docs/PROTOCOL.md gives
//! it) and the session pools a connection picks from. Knows nothing of
//! connections or the wire.

use clap::ValueEnum;

/// Where a connection's requests go, relative to the shard serving it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Locality {
    /// Sessions at random, whatever shard owns them (with N shards about
    /// (N-1)/N of requests cross).
    #[default]
    Any,
    /// Only sessions owned by the connection's shard: no request crosses.
    Local,
    /// Only sessions owned by another shard: every request crosses.
    Remote,
}

impl Locality {
    pub fn name(self) -> &'static str {
        match self {
            Locality::Any => "any",
            Locality::Local => "local",
            Locality::Remote => "remote",
        }
    }
}

/// The shard that owns `tkn` on a server of `shards` shards: SplitMix64's
/// finalizer, then modulo, exactly as the server routes.
pub fn shard_of(tkn: u64, shards: usize) -> usize {
    let mut x = tkn;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % shards.max(1) as u64) as usize
}

/// For a connection served by shard `s`, `pools[s]` lists the indexes of
/// the sessions it may pick. Fails, naming the shard, when one of `used`
/// (the shards serving connections) would have none to pick.
pub fn pools(
    tokens: &[u64],
    shards: usize,
    locality: Locality,
    used: &[usize],
) -> Result<Vec<Vec<u32>>, String> {
    let mut pools = vec![Vec::new(); shards];
    for (i, &tkn) in tokens.iter().enumerate() {
        let owner = shard_of(tkn, shards);
        for (s, pool) in pools.iter_mut().enumerate() {
            let fits = match locality {
                Locality::Any => true,
                Locality::Local => owner == s,
                Locality::Remote => owner != s,
            };
            if fits {
                pool.push(i as u32);
            }
        }
    }
    if let Some(&s) = used.iter().find(|&&s| pools[s].is_empty()) {
        return Err(format!(
            "--locality {}: no session for the connections of shard {s} to pick; \
             raise --sessions",
            locality.name()
        ));
    }
    Ok(pools)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known values of the server's `mesh::shard_of` (its unit test checks
    /// the same table): the two must route every token alike.
    const KNOWN: [(u64, [usize; 4]); 7] = [
        (1, [1, 1, 1, 5]),
        (2, [0, 1, 2, 2]),
        (3, [0, 2, 0, 0]),
        (12345, [1, 0, 1, 1]),
        (0xdead_beef, [0, 2, 2, 2]),
        (u64::MAX, [1, 0, 3, 3]),
        (9_007_199_254_740_993, [0, 1, 2, 2]),
    ];

    #[test]
    fn agrees_with_the_server() {
        for (tkn, want) in KNOWN {
            let got = [2, 3, 4, 8].map(|n| shard_of(tkn, n));
            assert_eq!(got, want, "token {tkn}");
            assert_eq!(shard_of(tkn, 1), 0);
        }
    }

    #[test]
    fn pools_keep_or_avoid_the_connections_shard() {
        let tokens: Vec<u64> = (1..=200).collect();
        for locality in [Locality::Local, Locality::Remote] {
            let pools = pools(&tokens, 3, locality, &[0, 1, 2]).unwrap();
            for (s, pool) in pools.iter().enumerate() {
                assert!(!pool.is_empty());
                for &i in pool {
                    let own = shard_of(tokens[i as usize], 3) == s;
                    assert_eq!(own, locality == Locality::Local);
                }
            }
        }
        let all = pools(&tokens, 2, Locality::Any, &[0, 1]).unwrap();
        assert!(all.iter().all(|p| p.len() == tokens.len()));
        let err = pools(&[1], 2, Locality::Local, &[0]).unwrap_err();
        assert!(err.contains("shard 0"), "{err}");
    }
}
