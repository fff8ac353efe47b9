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

    /// The script's SHA1, as EVALSHA takes it.
    pub(crate) fn sha(&self) -> &str {
        &self.sha
    }

    pub(super) fn cmd(
        &self,
        verb: &str,
        body: &str,
        keys: &[&[u8]],
        args: &[&[u8]],
        last: Option<&[u8]>,
    ) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        if let Some(last) = last {
            cmd.arg(last);
        }
        cmd
    }
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Script").field("sha", &self.sha).finish()
    }
}
