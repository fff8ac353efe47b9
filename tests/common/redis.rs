//! Throw-away `redis-server` processes for tests.
//!
//! Each [`RedisServer`] runs on a free loopback port with persistence off, in its own temporary
//! directory, and is killed when dropped. Tests never use a server they did not start (in particular
//! not one that may already listen on 6379).
//!
//! Without a `redis-server` binary, [`RedisServer::start`] returns `None` after printing why, so the
//! test can skip, unless `RAMPART_REQUIRE_REDIS=1` or `CI` is set, in which case it panics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
}

/// Whether Redis tests must run (CI) rather than skip.
pub fn redis_required() -> bool {
    std::env::var_os("RAMPART_REQUIRE_REDIS").is_some_and(|v| v != "0")
        || std::env::var_os("CI").is_some_and(|v| v != "false" && v != "0")
}

fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REDIS_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts a server, or returns `None` (after printing the reason) where Redis is not installed
    /// and not required.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra_args: &[&str]) -> Option<Self> {
        Self::start_with_fn(|| extra_args.iter().map(|s| s.to_string()).collect())
    }

    /// Starts a server with extra arguments from `extra_args`, called again for each attempt (up
    /// to 5, each on a fresh port): arguments that name ports of their own (a cluster bus port)
    /// must pick fresh ones too, or a port taken once fails every attempt.
    pub fn start_with_fn(extra_args: impl Fn() -> Vec<String>) -> Option<Self> {
        if binary().is_none() {
            let why = "redis-server is not installed (apt-get install redis-server)";
            if redis_required() {
                panic!("{why}, and RAMPART_REQUIRE_REDIS/CI requires Redis tests to run");
            }
            eprintln!("skipping Redis test: {why}");
            return None;
        }
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("rampart-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create a temporary directory for redis-server");
            let mut server = Self {
                port,
                dir,
                child: None,
                extra_args: extra_args(),
            };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// The value given to `flag` among the extra arguments, if any.
    pub fn extra_arg(&self, flag: &str) -> Option<&str> {
        self.extra_args
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.extra_args.get(i + 1))
            .map(String::as_str)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = binary().expect("checked in start");
        let port = self.port.to_string();
        let mut child = Command::new(bin)
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "no", "--logfile", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn failed: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                return Err(format!("redis-server exited with {status}: {err}"));
            }
            if ping(self.addr()) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("redis-server did not answer PING within 10 s".into())
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A `redis://` URL for the server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A connection of the test's own to the server (for commands the code under test does not
    /// send: seeding, inspecting, breaking).
    pub async fn connection(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url())
            .expect("a valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and waits for it to exit: connections drop at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)). Its data is gone.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restarting redis-server: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Sends one raw command (RESP inline) and returns the first reply line.
    pub fn command(&self, cmd: &str) -> String {
        command_at(self.addr(), cmd)
    }

    /// Waits (at most 5 s) until exactly one key matches `pattern` (as `KEYS` reads it): for writes
    /// that land after the response that caused them.
    pub async fn until_one_key(&self, pattern: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let found = self.command(&format!("KEYS {pattern}"));
            if found.starts_with("*1\r\n") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no single key matching {pattern} within 5 s: KEYS answered {found}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Sends one raw command (RESP inline) to the server at `addr` and returns the first reply line
/// (waiting up to 5 s for it).
pub fn command_at(addr: SocketAddr, cmd: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect("connect to the test redis-server");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim_end().to_string()
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throw-away 3-master Redis Cluster on free loopback ports (no replicas), killed when dropped.
///
/// Each node is a [`RedisServer`] started with `--cluster-enabled yes` and a cluster bus port of
/// its own; slots are split in three with `CLUSTER ADDSLOTSRANGE`, the nodes meet with
/// `CLUSTER MEET`, and [`start`](Self::start) returns once every node reports `cluster_state:ok`.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the cluster, or returns `None` (after printing why) where Redis is not installed and
    /// not required.
    pub fn start() -> Option<Self> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // A fresh bus port for every attempt to start the node.
            let node = RedisServer::start_with_fn(|| {
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &free_port().to_string(),
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-require-full-coverage",
                    "yes",
                ]
                .map(String::from)
                .to_vec()
            })?;
            nodes.push(node);
        }
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (node, (from, to)) in nodes.iter().zip(ranges) {
            let reply = node.command(&format!("CLUSTER ADDSLOTSRANGE {from} {to}"));
            assert_eq!(reply, "+OK", "CLUSTER ADDSLOTSRANGE on {}", node.port());
        }
        for other in &nodes[1..] {
            let bus = other.extra_arg("--cluster-port").expect("a bus port");
            let reply = nodes[0].command(&format!("CLUSTER MEET 127.0.0.1 {} {bus}", other.port()));
            assert_eq!(reply, "+OK", "CLUSTER MEET {}", other.port());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes
                .iter()
                .all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"));
            let known = nodes
                .iter()
                .all(|n| n.command("CLUSTER INFO").contains("cluster_known_nodes:3"));
            if ok && known {
                return Some(Self { nodes });
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not reach cluster_state:ok within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes' `redis://` URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

impl RedisServer {
    /// The whole reply to `INFO <section>`.
    pub fn info(&self, section: &str) -> String {
        let client = redis::Client::open(self.url()).expect("a valid test url");
        let mut con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis-server");
        redis::cmd("INFO")
            .arg(section)
            .query(&mut con)
            .expect("INFO answers")
    }

    /// How many times `command` (lowercase, e.g. `"evalsha"`) has run, from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.info("commandstats");
        let needle = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a call count"))
    }

    /// How many error replies starting with `code` (e.g. `"RAMPARTLATE"`) Redis has sent, from
    /// `INFO errorstats` (Redis counts them by their first word).
    pub fn errors(&self, code: &str) -> u64 {
        let stats = self.info("errorstats");
        let needle = format!("errorstat_{code}:count=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .map_or(0, |n| n.trim().parse().expect("an error count"))
    }

    /// The number of connected clients, from `INFO clients`.
    pub fn connected_clients(&self) -> u64 {
        self.info("clients")
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO clients has connected_clients")
    }
}
