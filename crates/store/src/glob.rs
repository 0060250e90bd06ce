//! Redis's glob-style matching (KEYS, SCAN MATCH, HSCAN ...): `*`, `?`, `[abc]`, `[^a-z]`, `\x`.

pub fn matches(pattern: &[u8], s: &[u8], nocase: bool) -> bool {
    match_at(pattern, s, nocase, 0) == Outcome::Match
}

/// `GiveUp` means a `*` already tried every suffix of the string, so an outer `*` trying a later
/// start (a shorter suffix) cannot succeed either: this keeps `*a*a*a...` patterns polynomial.
#[derive(PartialEq, Eq)]
enum Outcome {
    Match,
    NoMatch,
    GiveUp,
}

fn eq(a: u8, b: u8, nocase: bool) -> bool {
    if nocase {
        a.eq_ignore_ascii_case(&b)
    } else {
        a == b
    }
}

fn match_at(mut p: &[u8], mut s: &[u8], nocase: bool, depth: usize) -> Outcome {
    // Bound recursion on hostile patterns such as "*a*a*a*...".
    if depth > 1000 {
        return Outcome::GiveUp;
    }
    while let Some(&c) = p.first() {
        match c {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return Outcome::Match;
                }
                for i in 0..=s.len() {
                    match match_at(&p[1..], &s[i..], nocase, depth + 1) {
                        Outcome::NoMatch => {}
                        decided => return decided,
                    }
                }
                return Outcome::GiveUp;
            }
            b'?' => {
                if s.is_empty() {
                    return Outcome::NoMatch;
                }
                s = &s[1..];
            }
            b'[' => {
                if s.is_empty() {
                    return Outcome::NoMatch;
                }
                p = &p[1..];
                let not = p.first() == Some(&b'^');
                if not {
                    p = &p[1..];
                }
                let mut matched = false;
                loop {
                    match p.first() {
                        None => break,
                        Some(b'\\') if p.len() >= 2 => {
                            p = &p[1..];
                            if eq(p[0], s[0], nocase) {
                                matched = true;
                            }
                        }
                        Some(b']') => break,
                        Some(_) if p.len() >= 3 && p[1] == b'-' => {
                            let (mut lo, mut hi) = (p[0], p[2]);
                            if lo > hi {
                                std::mem::swap(&mut lo, &mut hi);
                            }
                            let mut ch = s[0];
                            if nocase {
                                lo = lo.to_ascii_lowercase();
                                hi = hi.to_ascii_lowercase();
                                ch = ch.to_ascii_lowercase();
                            }
                            if ch >= lo && ch <= hi {
                                matched = true;
                            }
                            p = &p[2..];
                        }
                        Some(&x) => {
                            if eq(x, s[0], nocase) {
                                matched = true;
                            }
                        }
                    }
                    p = &p[1..];
                }
                if not {
                    matched = !matched;
                }
                if !matched {
                    return Outcome::NoMatch;
                }
                s = &s[1..];
                if p.is_empty() {
                    // Unterminated class: Redis treats the end of the pattern as the end.
                    return if s.is_empty() {
                        Outcome::Match
                    } else {
                        Outcome::NoMatch
                    };
                }
            }
            b'\\' if p.len() >= 2 => {
                p = &p[1..];
                if s.is_empty() || !eq(p[0], s[0], nocase) {
                    return Outcome::NoMatch;
                }
                s = &s[1..];
            }
            _ => {
                if s.is_empty() || !eq(c, s[0], nocase) {
                    return Outcome::NoMatch;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    if p.is_empty() && s.is_empty() {
        Outcome::Match
    } else {
        Outcome::NoMatch
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches(b"*", b"anything", false));
        assert!(matches(b"h?llo", b"hello", false));
        assert!(matches(b"h*llo", b"heeeello", false));
        assert!(matches(b"h[ae]llo", b"hallo", false));
        assert!(!matches(b"h[^e]llo", b"hello", false));
        assert!(matches(b"h[a-b]llo", b"hbllo", false));
        assert!(matches(b"a\\*b", b"a*b", false));
        assert!(!matches(b"a\\*b", b"axb", false));
        assert!(matches(b"user:*", b"user:", false));
        assert!(!matches(b"abc", b"ab", false));
        // Hostile pattern: must finish quickly and say no.
        assert!(!matches(&b"*a".repeat(200), &b"a".repeat(100), false));
        assert!(matches(&b"*a".repeat(50), &b"a".repeat(100), false));
    }
}
