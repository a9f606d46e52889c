//! Shell-style globs for `_hydraGlobConstituents`, matching as POSIX `fnmatch` with no flags.
//!
//! `*` matches any run of characters, dots and slashes included; `?` one character; `[...]` one
//! character of a set (`[a-z0-9]`, negated by a leading `!` or `^`; a `]` first in the set is a
//! member; an unclosed `[` is a literal); a backslash makes the next character literal.

/// Whether `name` matches the glob `pattern`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0, 0);
    // Where to resume after the last `*`: the pattern position after it, and the name position
    // it has absorbed up to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pattern.get(p) {
            Some('*') => {
                star = Some((p + 1, n));
                p += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match bracket(&pattern[p..], name[n]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                None => (name[n] == '[').then_some(1),
            },
            Some('\\') if p + 1 < pattern.len() => (pattern[p + 1] == name[n]).then_some(2),
            Some(&c) => (c == name[n]).then_some(1),
            None => None,
        };
        match step {
            Some(len) => {
                p += len;
                n += 1;
            }
            None => match star {
                Some((after, absorbed)) => {
                    star = Some((after, absorbed + 1));
                    p = after;
                    n = absorbed + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Matches `c` against the bracket expression at the start of `pattern` (which begins with
/// `[`): `Some((matched, length of the expression))`, or `None` when it is not closed.
fn bracket(pattern: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = matches!(pattern.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let mut low = *pattern.get(i)?;
        if low == ']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        if low == '\\' {
            i += 1;
            low = *pattern.get(i)?;
        }
        i += 1;
        if pattern.get(i) == Some(&'-') && pattern.get(i + 1).is_some_and(|&h| h != ']') {
            let mut high = pattern[i + 1];
            i += 2;
            if high == '\\' {
                high = *pattern.get(i)?;
                i += 1;
            }
            matched |= low <= c && c <= high;
        } else {
            matched |= low == c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn star_matches_across_dots() {
        assert!(glob_match("packages.*", "packages.hello"));
        assert!(glob_match("packages.*", "packages.sub.hello"));
        assert!(glob_match("*", "anything.at.all"));
        assert!(glob_match("*.x86_64-linux", "tests.unit.x86_64-linux"));
        assert!(!glob_match("packages.*", "tests.hello"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn question_mark_and_brackets_match_one_character() {
        assert!(glob_match("step?", "step1"));
        assert!(!glob_match("step?", "step10"));
        assert!(glob_match("part[1-3]", "part2"));
        assert!(!glob_match("part[1-3]", "part4"));
        assert!(glob_match("part[!1-3]", "part4"));
        assert!(glob_match("part[^1-3]", "part5"));
        assert!(glob_match("x[]]", "x]"));
        assert!(glob_match("x[", "x["));
    }

    #[test]
    fn backslash_escapes_special_characters() {
        assert!(glob_match(r"a\*b", "a*b"));
        assert!(!glob_match(r"a\*b", "aXb"));
    }

    #[test]
    fn exact_names_match_themselves_only() {
        assert!(glob_match("docs.manual", "docs.manual"));
        assert!(!glob_match("docs.manual", "docs.manuals"));
        assert!(!glob_match("docs.manual", "docs"));
    }
}
