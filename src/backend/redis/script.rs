//! A Lua script, run by its SHA1 (EVALSHA) with a NOSCRIPT fallback to EVAL.

use std::fmt;

use redis::Cmd;

/// A Lua script, run by its SHA1 (EVALSHA) and sent whole (EVAL) when the server answers NOSCRIPT,
/// which also loads it into that server's script cache.
pub(crate) struct Script {
    pub(super) code: std::borrow::Cow<'static, str>,
    pub(super) sha: String,
}

impl Script {
    pub(crate) fn new(code: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        let code = code.into();
        Self {
            sha: sha1_smol::Sha1::from(code.as_bytes()).digest().to_string(),
            code,
        }
    }

    /// The script's text.
    pub(crate) fn code(&self) -> &str {
        &self.code
    }

    /// The script's SHA1, as EVALSHA takes it.
    pub(crate) fn sha(&self) -> &str {
        &self.sha
    }

    /// The command, its buffers sized for it at once: `redis::cmd` starts them empty, and
    /// growing them arg by arg reallocated both four or five times per call (bench
    /// `instructions -- redis`, rows `redis*/rampart_store` against `redis*/raw_evalsha`).
    pub(super) fn cmd(
        &self,
        verb: &str,
        body: &str,
        keys: &[&[u8]],
        args: &[&[u8]],
        last: Option<u64>,
    ) -> Cmd {
        let bytes = verb.len()
            + body.len()
            + 20
            + keys.iter().chain(args).map(|a| a.len()).sum::<usize>()
            + 20;
        let mut cmd = Cmd::with_capacity(3 + keys.len() + args.len() + 1, bytes);
        cmd.arg(verb).arg(body).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        if let Some(last) = last {
            // Its digits, written by the `redis` crate straight into the command (no `String`).
            cmd.arg(last);
        }
        cmd
    }
}

/// A script's text from its `parts` in order, each line `--#include <name>` written out as the
/// first fragment of that name in `includes` (its own includes written out in turn): a fragment
/// is written once
/// in the source and appears wherever a script needs it inline, where a Lua function would be a
/// closure made on every call (see `prelude.lua`). Lines that are only a comment are left out.
///
/// # Panics
///
/// On an include `includes` does not name, or one that includes itself: the crate's own scripts,
/// composed by every test that runs them.
pub(crate) fn compose(parts: &[&str], includes: &[(&str, &str)]) -> String {
    fn write(out: &mut String, text: &str, includes: &[(&str, &str)], depth: usize) {
        assert!(depth < 8, "script fragments include each other");
        for line in text.split_inclusive('\n') {
            let text = line.trim();
            match text.strip_prefix("--#include ") {
                // A line that is only a comment is left out: the source files document the
                // scripts, and Redis need not receive it (a `NOSCRIPT` answered by sending the
                // whole script, once per call on its way, sent 33 KB with them, 12 KB without).
                None if text.starts_with("--") => {}
                Some(name) => {
                    let (_, fragment) = includes
                        .iter()
                        .find(|(n, _)| *n == name)
                        .unwrap_or_else(|| panic!("no script fragment named {name:?}"));
                    write(out, fragment, includes, depth + 1);
                }
                None => out.push_str(line),
            }
        }
        // A part that does not end its last line would run it into the next part's first.
        if !text.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    }
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() * 2);
    for part in parts {
        write(&mut out, part, includes, 0);
    }
    out
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script").field("sha", &self.sha).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::compose;

    #[test]
    fn compose_writes_out_includes_in_place_and_nested_and_leaves_comment_lines_out() {
        // A fragment without its last line's end gets one.
        let inner = "x = 1";
        let outer = "do\n  --#include inner\nend\n";
        let script = compose(
            &[
                "a = 0\n  -- a comment\n",
                "--#include outer\nreturn a -- kept\n",
            ],
            &[("inner", inner), ("outer", outer)],
        );
        assert_eq!(script, "a = 0\ndo\nx = 1\nend\nreturn a -- kept\n");
    }

    #[test]
    #[should_panic(expected = "no script fragment named \"missing\"")]
    fn compose_refuses_an_include_it_has_not_got() {
        compose(&["--#include missing\n"], &[]);
    }

    #[test]
    #[should_panic(expected = "include each other")]
    fn compose_refuses_a_fragment_that_includes_itself() {
        compose(&["--#include a\n"], &[("a", "--#include a\n")]);
    }
}
