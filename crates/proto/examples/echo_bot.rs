//! A bot that answers every private message with an echo.
//!
//! Run a server (`cargo run --release -p simpletextim-server`), then:
//!
//! ```text
//! cargo run -p simpletextim-proto --example echo_bot -- 127.0.0.1:5000 echo-bot bot-password
//! ```
//!
//! and send `echo-bot` a private message from another client.

use futures::StreamExt;
use simpletextim_proto::{Client, Reply};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:5000".into());
    let me = args.next().unwrap_or_else(|| "echo-bot".into());
    let password = args.next().unwrap_or_else(|| "bot-password".into());

    let mut client = Client::connect(addr.as_str()).await?;
    let pending = client.login(&me, &password).await?;
    println!("logged in as {me}; {} messages were waiting", pending.len());
    client
        .send_public(&format!("{me} here: send me a private message"))
        .await?;

    while let Some(reply) = client.next().await {
        match reply? {
            Reply::Message { messages, .. } => {
                for m in messages {
                    println!("<{}> {}", m.user_id, m.message);
                    if m.is_private() && !m.user_id.as_str().eq_ignore_ascii_case(&me) {
                        let answer: String = format!("you said: {}", m.message)
                            .chars()
                            .take(140)
                            .collect();
                        client.send_private(m.user_id.as_str(), &answer).await?;
                    }
                }
            }
            Reply::Joined { user_id } => println!("* {user_id} joined"),
            Reply::Left { user_id } => println!("* {user_id} left"),
            Reply::Fail { fail, .. } => eprintln!("server: {fail}"),
            Reply::List { list, .. } => println!("online: {list:?}"),
            Reply::Unreadable { kind, error } => eprintln!("skipped a {kind:?} reply: {error}"),
            _ => {} // a kind of reply from a newer server
        }
    }
    Ok(())
}
