//! A TCP fault proxy for tests: sits on a free loopback port between a client and a real server
//! (a `redis-server`, here), forwards bytes both ways, and on command makes the faults a network
//! makes:
//!
//! - [`forward`](FaultProxy::forward): bytes flow (the initial mode, and the mode after a pause);
//! - [`pause`](FaultProxy::pause): every byte is held, on every connection, open or new, until
//!   [`forward`](FaultProxy::forward) delivers it (a stalled link, a GC pause on a middlebox);
//! - [`hold_open`](FaultProxy::hold_open): every byte is held on the connections open now, until
//!   [`forward`](FaultProxy::forward) delivers it; connections opened later forward (one path
//!   stalled and healed later, say a congested link, while a new connection takes another);
//! - [`freeze`](FaultProxy::freeze): every connection open now goes silent for ever (bytes either
//!   way are read and dropped, and the proxy never closes it); connections opened later forward
//!   (a dropped NAT or conntrack entry, a VIP failover: no RST, no FIN);
//! - [`reset`](FaultProxy::reset): every connection open now is closed with a RST;
//! - [`hold_replies_after`](FaultProxy::hold_replies_after): the client's bytes that hold a
//!   pattern reach the server, and from then on every byte the server sends back is held until
//!   [`forward`](FaultProxy::forward) (a command that ran, whose answer is slow to come back).
//!
//! It counts connections accepted and open (a connection stays open until its client closes it,
//! frozen or not), so tests can prove that nothing leaks. Runs on the current Tokio runtime; its
//! tasks end when it is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Control {
    paused: bool,
    /// Connections accepted before the last freeze (epoch below this) are frozen.
    freeze_epoch: u64,
    /// Connections accepted before the last reset are reset.
    reset_epoch: u64,
    /// While `held`, connections accepted before the last `hold_open` (epoch below this) hold
    /// their bytes.
    hold_epoch: u64,
    held: bool,
    /// Server-to-client bytes are held (set by a `hold_replies_after` pattern seen).
    replies_held: bool,
}

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// A fault proxy in front of one server; see the module documentation.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    control: watch::Sender<Control>,
    trigger: Trigger,
    counts: Arc<Counts>,
    tasks: JoinSet<()>,
}

impl FaultProxy {
    /// Starts a proxy to `target` on a free loopback port, forwarding.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the fault proxy");
        let addr = listener.local_addr().unwrap();
        let (control, _) = watch::channel(Control::default());
        let counts = Arc::new(Counts::default());
        let trigger = Trigger::default();
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(
            listener,
            target,
            control.clone(),
            Arc::clone(&counts),
            trigger.clone(),
        ));
        Self {
            addr,
            control,
            trigger,
            counts,
            tasks,
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A `redis://` URL through the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    /// Lets bytes flow again (held bytes are delivered). Frozen connections stay frozen.
    pub fn forward(&self) {
        *self.trigger.lock().unwrap() = None;
        self.control.send_modify(|c| {
            c.paused = false;
            c.held = false;
            c.replies_held = false;
        });
    }

    /// The next bytes from a client that hold `pattern` (within one read) go to the server; from
    /// then on, every byte any server sends back is held until [`forward`](Self::forward).
    pub fn hold_replies_after(&self, pattern: &[u8]) {
        assert!(
            !pattern.is_empty(),
            "an empty pattern would match everything"
        );
        *self.trigger.lock().unwrap() = Some(pattern.to_vec());
    }

    /// Holds every byte on the connections open now until [`forward`](Self::forward); new ones
    /// forward.
    pub fn hold_open(&self) {
        self.control.send_modify(|c| {
            c.hold_epoch += 1;
            c.held = true;
        });
    }

    /// Holds every byte on every connection until [`forward`](Self::forward).
    pub fn pause(&self) {
        self.control.send_modify(|c| c.paused = true);
    }

    /// Makes every connection open now silent for ever; new ones forward.
    pub fn freeze(&self) {
        self.control.send_modify(|c| c.freeze_epoch += 1);
    }

    /// Closes every connection open now with a RST.
    pub fn reset(&self) {
        self.control.send_modify(|c| c.reset_epoch += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose client has not closed them yet (reset ones excepted).
    pub fn open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// The pattern that holds the replies once a client sends it (shared by every connection).
type Trigger = Arc<std::sync::Mutex<Option<Vec<u8>>>>;

/// Decrements the open count when a connection's task ends, however it ends.
struct OpenGuard(Arc<Counts>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    control: watch::Sender<Control>,
    counts: Arc<Counts>,
    trigger: Trigger,
) {
    // Connection tasks live in this set, so that aborting this task (the proxy dropped) ends them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                counts.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(Arc::clone(&counts));
                let rx = control.subscribe();
                let up = Some((trigger.clone(), control.clone()));
                connections.spawn(connection(client, target, rx, guard, up));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// How a pump ended.
enum End {
    /// Its reader closed (or failed).
    Closed,
    /// The proxy was told to reset this connection.
    Reset,
}

async fn connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut rx: watch::Receiver<Control>,
    _guard: OpenGuard,
    trigger: Option<(Trigger, watch::Sender<Control>)>,
) {
    let born = *rx.borrow_and_update();
    let Ok(mut server) = TcpStream::connect(target).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let (end, server_closed) = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let up = pump(
            &mut client_read,
            &mut server_write,
            rx.clone(),
            born,
            trigger,
        );
        let down = pump(&mut server_read, &mut client_write, rx.clone(), born, None);
        tokio::select! {
            end = up => (end, false),
            end = down => (end, true),
        }
    };
    // The server closed a frozen connection: its client must not learn it, so wait for the client
    // to close it, or for a reset.
    let end = if server_closed && matches!(end, End::Closed) && frozen(&rx.borrow(), &born) {
        drop(server);
        wait_reset_or_eof(&mut client, &mut rx, born).await
    } else {
        end
    };
    if matches!(end, End::Reset) {
        let _ = client.set_zero_linger();
    }
}

fn frozen(now: &Control, born: &Control) -> bool {
    now.freeze_epoch > born.freeze_epoch
}

fn reset(now: &Control, born: &Control) -> bool {
    now.reset_epoch > born.reset_epoch
}

async fn wait_reset_or_eof(
    client: &mut TcpStream,
    rx: &mut watch::Receiver<Control>,
    born: Control,
) -> End {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            n = client.read(&mut buf) => match n {
                Ok(0) | Err(_) => return End::Closed,
                Ok(_) => {}
            },
            changed = rx.changed() => {
                if changed.is_err() || reset(&rx.borrow(), &born) {
                    return End::Reset;
                }
            }
        }
    }
}

/// Copies `from` to `to`, holding bytes while paused and dropping them once frozen. The
/// client-to-server pump has the trigger (`up`); the other holds while replies are held.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    mut rx: watch::Receiver<Control>,
    born: Control,
    up: Option<(Trigger, watch::Sender<Control>)>,
) -> End
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            },
            changed = rx.changed() => {
                if changed.is_err() || reset(&rx.borrow(), &born) {
                    return End::Reset;
                }
                continue;
            }
        };
        // A client's bytes holding the trigger's pattern hold every reply from now on (set before
        // they are delivered, so their own reply is held too).
        if let Some((trigger, control)) = &up {
            let mut pattern = trigger.lock().unwrap();
            if pattern
                .as_deref()
                .is_some_and(|p| buf[..n].windows(p.len()).any(|w| w == p))
            {
                *pattern = None;
                control.send_modify(|c| c.replies_held = true);
            }
        }
        let replies = up.is_none();
        // Deliver, hold or drop what was read.
        loop {
            let now = *rx.borrow_and_update();
            if reset(&now, &born) {
                return End::Reset;
            }
            if frozen(&now, &born) {
                break;
            }
            if !now.paused
                && (!now.held || now.hold_epoch <= born.hold_epoch)
                && (!replies || !now.replies_held)
            {
                if to.write_all(&buf[..n]).await.is_err() {
                    return End::Closed;
                }
                break;
            }
            if rx.changed().await.is_err() {
                return End::Reset;
            }
        }
    }
}
