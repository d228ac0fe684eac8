use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use crate::mqttbytes::{self, v4::*};
use crate::{Incoming, MqttState, StateError};

/// Patched in: whether new requests wait (`EventLoop::write_hold`): something is in flight
/// and fewer than `hold` of the `max` in-flight slots are free.
pub(crate) fn write_held(hold: u16, inflight: u16, max: u16) -> bool {
    hold > 0 && inflight > 0 && max.saturating_sub(inflight) < hold
}

/// Patched in: the descriptor of a connected TCP socket, where `quickack` can use it.
#[allow(unused_variables)]
pub(crate) fn quickack_fd(socket: &tokio::net::TcpStream) -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        Some(socket.as_raw_fd())
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Patched in: asks the kernel to acknowledge at once, at TCP level, what was received on
/// the socket `fd` (`TCP_QUICKACK`), instead of delaying the ACK until data goes the other
/// way. Linux only; elsewhere nothing. Best effort: a failure only changes timing.
#[allow(unused_variables)]
pub(crate) fn quickack(fd: Option<i32>) {
    #[cfg(target_os = "linux")]
    if let Some(fd) = fd {
        let one: libc::c_int = 1;
        // SAFETY: `fd` is the socket of the `Network` that calls this, open for as long as
        // that exists; `one` outlives the call and its size is passed with it.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// Network transforms packets <-> frames efficiently. It takes
/// advantage of pre-allocation, buffering and vectorization when
/// appropriate to achieve performance
pub struct Network {
    /// Frame MQTT packets from network connection
    framed: Framed<Box<dyn AsyncReadWrite>, Codec>,
    /// Maximum readv count
    max_readb_count: usize,
    /// Patched in: the TCP socket's descriptor, for `quickack` (Linux, plain TCP or TLS).
    quickack_fd: Option<i32>,
}

impl Network {
    pub fn new(
        socket: impl AsyncReadWrite + 'static,
        max_incoming_size: usize,
        max_outgoing_size: usize,
    ) -> Network {
        let socket = Box::new(socket) as Box<dyn AsyncReadWrite>;
        let codec = Codec {
            max_incoming_size,
            max_outgoing_size,
        };
        let framed = Framed::new(socket, codec);

        Network {
            framed,
            max_readb_count: 10,
            quickack_fd: None,
        }
    }

    /// Patched in: the descriptor of the TCP socket under this network, if any.
    pub(crate) fn set_quickack_fd(&mut self, fd: Option<i32>) {
        self.quickack_fd = fd;
    }

    /// Patched in: whether [`Network::quickack`] does anything here.
    pub(crate) fn can_quickack(&self) -> bool {
        cfg!(target_os = "linux") && self.quickack_fd.is_some()
    }

    /// Patched in: see [`quickack`].
    pub(crate) fn quickack(&self) {
        quickack(self.quickack_fd);
    }

    /// Reads and returns a single packet from network
    pub async fn read(&mut self) -> Result<Incoming, StateError> {
        match self.framed.next().await {
            Some(Ok(packet)) => Ok(packet),
            Some(Err(mqttbytes::Error::InsufficientBytes(_))) => unreachable!(),
            Some(Err(e)) => Err(StateError::Deserialization(e)),
            None => Err(StateError::ConnectionAborted),
        }
    }

    /// Read packets in bulk. This allow replies to be in bulk. This method is used
    /// after the connection is established to read a bunch of incoming packets
    pub async fn readb(&mut self, state: &mut MqttState) -> Result<(), StateError> {
        // wait for the first read
        let mut res = self.framed.next().await;
        let mut count = 1;
        loop {
            match res {
                Some(Ok(packet)) => {
                    if let Some(outgoing) = state.handle_incoming_packet(packet)? {
                        self.write(outgoing).await?;
                    }

                    count += 1;
                    if count >= self.max_readb_count {
                        break;
                    }
                }
                Some(Err(mqttbytes::Error::InsufficientBytes(_))) => unreachable!(),
                Some(Err(e)) => return Err(StateError::Deserialization(e)),
                None => return Err(StateError::ConnectionAborted),
            }
            // do not wait for subsequent reads
            match self.framed.next().now_or_never() {
                Some(r) => res = r,
                _ => break,
            };
        }

        Ok(())
    }

    /// Serializes packet into write buffer
    pub async fn write(&mut self, packet: Packet) -> Result<(), StateError> {
        self.framed
            .feed(packet)
            .await
            .map_err(StateError::Deserialization)
    }

    pub async fn flush(&mut self) -> Result<(), crate::state::StateError> {
        self.framed
            .flush()
            .await
            .map_err(StateError::Deserialization)
    }
}

pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T> AsyncReadWrite for T where T: AsyncRead + AsyncWrite + Send + Unpin {}
