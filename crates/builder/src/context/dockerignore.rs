//! Exclude patterns with Docker's `.dockerignore` semantics (moby's patternmatcher): each
//! pattern is cleaned like Go's `filepath.Clean`, a leading `/` is dropped, `*` and `?` stop
//! at `/`, `**` spans any number of directories, `[...]` is a character class negated by `^`,
//! `\` escapes; a pattern that matches a parent directory matches everything under it; `!`
//! re-includes; the last matching pattern wins.

use regex::Regex;

use super::ContextError;

/// One compiled pattern.
#[derive(Debug)]
struct Rule {
    regex: Regex,
    /// A `!` pattern: a match includes instead of excluding.
    exception: bool,
}

/// A list of exclude patterns, applied to paths relative to the context root.
#[derive(Debug, Default)]
pub struct ExcludeRules {
    rules: Vec<Rule>,
}

impl ExcludeRules {
    /// Compiles `patterns` in order; `origin` names where they came from (for error messages),
    /// e.g. `exclude` or `.dockerignore`.
    pub fn new<'a>(
        origin: &str,
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ContextError> {
        let mut rules = ExcludeRules::default();
        rules.extend(origin, patterns)?;
        Ok(rules)
    }

    /// Adds `patterns` after the ones already there (so they win over them).
    pub fn extend<'a>(
        &mut self,
        origin: &str,
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ContextError> {
        for pattern in patterns {
            if let Some(rule) = compile(pattern).map_err(|reason| ContextError::Pattern {
                origin: origin.to_owned(),
                pattern: pattern.to_owned(),
                reason,
            })? {
                self.rules.push(rule);
            }
        }
        Ok(())
    }

    /// Whether `path` (relative, `/`-separated) is excluded.
    pub fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            // A rule can only change the outcome if it points the other way.
            if rule.exception != excluded {
                continue;
            }
            if rule.regex.is_match(path) || parents(path).any(|p| rule.regex.is_match(p)) {
                excluded = !rule.exception;
            }
        }
        excluded
    }

    /// Whether some `!` rule may re-include a path under an excluded directory, so the
    /// directory must still be walked.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether there are no rules (nothing is excluded).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The lines of a `.dockerignore` file that are patterns: comments (`#` in column 1) and blank
/// lines are skipped, the rest trimmed.
pub fn dockerignore_patterns(text: &str) -> Vec<&str> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
}

/// `a/b/c` → `a`, `a/b`.
fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Compiles one pattern; `None` for a pattern that is blank.
fn compile(raw: &str) -> Result<Option<Rule>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let (exception, body) = match raw.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, raw),
    };
    if body.is_empty() {
        return Err("`!` must be followed by a pattern".into());
    }
    let cleaned = clean(body);
    let cleaned = match cleaned.strip_prefix('/') {
        Some(rest) if !rest.is_empty() => rest.to_owned(),
        _ => cleaned,
    };
    let regex = Regex::new(&to_regex(&cleaned)?).map_err(|e| e.to_string())?;
    Ok(Some(Rule { regex, exception }))
}

/// Go's `path.Clean`: no empty or `.` elements, `..` resolved lexically, no trailing slash.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// Translates a cleaned pattern into an anchored regular expression, as patternmatcher does.
fn to_regex(pattern: &str) -> Result<String, String> {
    let mut re = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // `**/` is the same as `**`.
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    re.push_str(".*");
                } else {
                    re.push_str("(.*/)?");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => re.push_str(&class(&mut chars)?),
            '\\' => match chars.next() {
                Some(escaped) => re.push_str(&regex::escape(&escaped.to_string())),
                None => return Err("the pattern ends with a lone `\\`".into()),
            },
            other => re.push_str(&regex::escape(&other.to_string())),
        }
    }
    re.push('$');
    Ok(re)
}

/// Translates a Go character class (after its `[`) into a regex class with every member
/// spelled as a code point, so nothing in it has a regex meaning.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, String> {
    let mut out = String::from("[");
    if chars.peek() == Some(&'^') {
        chars.next();
        out.push('^');
    }
    let mut members = 0;
    loop {
        let c = chars
            .next()
            .ok_or_else(|| "a `[` character class is not closed with `]`".to_owned())?;
        if c == ']' && members > 0 {
            break;
        }
        let lo = class_char(c, chars)?;
        if chars.peek() == Some(&'-') {
            chars.next();
            let hi_raw = chars
                .next()
                .ok_or_else(|| "a `[` character class is not closed with `]`".to_owned())?;
            let hi = class_char(hi_raw, chars)?;
            if lo > hi {
                return Err(format!("the range `{lo}-{hi}` runs backwards"));
            }
            out.push_str(&format!("\\x{{{:x}}}-\\x{{{:x}}}", lo as u32, hi as u32));
        } else {
            out.push_str(&format!("\\x{{{:x}}}", lo as u32));
        }
        members += 1;
    }
    out.push(']');
    Ok(out)
}

fn class_char(
    c: char,
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
) -> Result<char, String> {
    if c == '\\' {
        chars
            .next()
            .ok_or_else(|| "a `\\` at the end of a character class escapes nothing".to_owned())
    } else {
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[&str]) -> ExcludeRules {
        ExcludeRules::new("test", patterns.iter().copied()).expect("valid patterns")
    }

    #[test]
    fn star_matches_within_one_directory_level_only() {
        let r = rules(&["*.md"]);
        assert!(r.excludes("README.md"));
        assert!(!r.excludes("docs/guide.md"));
    }

    #[test]
    fn docker_documentation_examples_behave_as_documented() {
        let r = rules(&["*/temp*", "*/*/temp*", "temp?"]);
        assert!(r.excludes("somedir/temporary.txt"));
        assert!(r.excludes("somedir/temp"));
        assert!(r.excludes("somedir/subdir/temporary.txt"));
        assert!(r.excludes("tempa"));
        assert!(!r.excludes("temporary.txt"));
        assert!(!r.excludes("a/b/c/temp"));
    }

    #[test]
    fn double_star_matches_at_any_depth_including_the_root() {
        let r = rules(&["**/*.md"]);
        assert!(r.excludes("README.md"));
        assert!(r.excludes("docs/deep/guide.md"));
        assert!(!r.excludes("docs/guide.txt"));
    }

    #[test]
    fn trailing_double_star_matches_everything_below() {
        let r = rules(&["build/**"]);
        assert!(r.excludes("build/a/b.o"));
        assert!(!r.excludes("builder/a"));
    }

    #[test]
    fn a_directory_pattern_excludes_everything_under_it() {
        let r = rules(&[".git"]);
        assert!(r.excludes(".git"));
        assert!(r.excludes(".git/objects/ab/cdef"));
        assert!(!r.excludes("src/.gitkeep"));
    }

    #[test]
    fn leading_slash_and_dot_segments_are_cleaned_away() {
        let r = rules(&["/foo/./bar/", "./baz"]);
        assert!(r.excludes("foo/bar"));
        assert!(r.excludes("baz"));
        assert!(!r.excludes("x/foo/bar"));
    }

    #[test]
    fn exclamation_re_includes_and_the_last_match_wins() {
        let r = rules(&["*.md", "!README*.md", "README-secret.md"]);
        assert!(r.excludes("CHANGES.md"));
        assert!(!r.excludes("README.md"));
        assert!(r.excludes("README-secret.md"));

        let reordered = rules(&["*.md", "README-secret.md", "!README*.md"]);
        assert!(!reordered.excludes("README-secret.md"));
    }

    #[test]
    fn exception_inside_an_excluded_directory_re_includes_the_file() {
        let r = rules(&["build", "!build/keep.txt"]);
        assert!(r.excludes("build/other.txt"));
        assert!(!r.excludes("build/keep.txt"));
        assert!(r.has_exceptions());
    }

    #[test]
    fn question_mark_matches_one_character_but_not_a_slash() {
        let r = rules(&["temp?"]);
        assert!(r.excludes("tempa"));
        assert!(!r.excludes("temp"));
        assert!(!r.excludes("tempab"));
        let nested = rules(&["a?b"]);
        assert!(!nested.excludes("a/b"));
    }

    #[test]
    fn character_classes_with_ranges_and_negation() {
        let r = rules(&["file[0-9].txt", "log[^a-c]"]);
        assert!(r.excludes("file7.txt"));
        assert!(!r.excludes("filex.txt"));
        assert!(r.excludes("logd"));
        assert!(!r.excludes("loga"));
    }

    #[test]
    fn regex_meta_characters_are_literal() {
        let r = rules(&["a.b", "c+d", "{x,y}", "e(f)|g$"]);
        assert!(r.excludes("a.b"));
        assert!(!r.excludes("axb"));
        assert!(r.excludes("c+d"));
        assert!(r.excludes("{x,y}"));
        assert!(!r.excludes("x"));
        assert!(r.excludes("e(f)|g$"));
    }

    #[test]
    fn backslash_escapes_a_wildcard() {
        let r = rules(&["\\*.txt"]);
        assert!(r.excludes("*.txt"));
        assert!(!r.excludes("a.txt"));
    }

    #[test]
    fn broken_patterns_are_refused_with_the_pattern_named() {
        for bad in ["[abc", "!", "[z-a]", "abc\\"] {
            let err = ExcludeRules::new("exclude", [bad]).expect_err(bad);
            let message = err.to_string();
            assert!(message.contains("exclude"), "{message}");
            assert!(message.contains(bad), "{message}");
        }
    }

    #[test]
    fn dockerignore_skips_comments_and_blank_lines_and_trims() {
        let text = "# comment\n\n  *.md  \n!README.md\n   # not a comment\n";
        assert_eq!(
            dockerignore_patterns(text),
            vec!["*.md", "!README.md", "# not a comment"]
        );
    }
}
