//! The `herald` binary: parse config, start the server, drain on SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use herald_server::{Cli, Config, Herald, LogFormat, Tls};
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli)?;
    init_logging(&config)?;
    raise_fd_limit();
    let listener =
        listen(SocketAddr::new(config.host, config.port)).with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    // Signal handlers are in place before the "listening" line: a SIGTERM right after it drains.
    let signal = shutdown_signal();
    config.log_started(listener.local_addr()?);
    // herald-redis's errors quote the URL: mask its password before the error is printed.
    let mut herald = Herald::start(&config).await?;
    if let Some(files) = &config.tls {
        herald = herald.with_tls(Tls::load(files.clone())?);
        herald.reload_tls_on_hangup();
    }
    herald.serve(listener, signal, config.shutdown_grace).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Installs the log subscriber: JSON lines, or text with colours only on a terminal (and never with
/// `NO_COLOR` set).
fn init_logging(config: &Config) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log).context("invalid log filter")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            builder.with_ansi(colour).init()
        }
    }
    Ok(())
}

/// Accept queue length: connection storms overflow tokio's default of 1024 and clients then wait for a
/// SYN retransmit (1 s). The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the open-file limit (one per connection) to the kernel's `nr_open` when privileged, else to
/// the hard limit.
fn raise_fd_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, nr_open, nr_open).is_err() {
        if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
        }
    }
}

/// Completes on SIGTERM or Ctrl-C. The handlers are registered when this is called, not when the
/// future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
