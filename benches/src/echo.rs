//! The raw-echo floor: the least a WebSocket server can do per frame with the
//! same stack as the chat server (tokio, tungstenite, the same read buffer and
//! no write buffer). One task per connection reads a frame and writes it back.
//! Whatever the chat server spends per delivery beyond this is its own cost.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Echoes every text or binary frame on every connection, until the process ends.
pub async fn serve(listener: TcpListener, read_buffer: usize) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            // As the chat server configures its sockets (session.rs).
            let config = WebSocketConfig::default()
                .read_buffer_size(read_buffer)
                .write_buffer_size(0);
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await
            else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                let echoed = match msg {
                    Message::Text(_) | Message::Binary(_) => ws.send(msg).await.is_ok(),
                    Message::Close(_) => false,
                    _ => true,
                };
                if !echoed {
                    return;
                }
            }
        });
    }
}

/// The body of a measuring program's `serve-echo` sub-command: binds a free
/// loopback port, prints `listening on ws://HOST:PORT`, echoes until killed.
pub fn run(read_buffer: usize) -> anyhow::Result<()> {
    use std::io::Write as _;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on ws://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        serve(listener, read_buffer).await?;
        Ok(())
    })
}
