//! The event loop: one channel of [`Event`]s fed by the terminal task and the network task;
//! each event updates the [`App`], the resulting [`Action`]s are carried out, and the
//! screen is redrawn from the state.

use std::io::{self, Write};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::warn;

use crate::app::{Action, App};
use crate::event::{Event, NetEvent, NetRequest};
use crate::net::Endpoint;
use crate::terminal::Tui;
use crate::{net, ui};

/// Capacity of the event channel (the network task waits when it is full).
const EVENT_QUEUE: usize = 1024;
/// Most events applied between two redraws.
const EVENTS_PER_FRAME: usize = 256;
/// How long quitting waits for the network task to say goodbye.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the client until the person quits, connecting to `server` (plain or TLS).
/// `initial` are actions to carry out first (a login with a password from the environment,
/// say).
///
/// # Errors
/// The I/O error when the terminal cannot be drawn on.
pub async fn run(
    terminal: &mut Tui,
    mut app: App,
    server: Endpoint,
    initial: Vec<Action>,
) -> io::Result<()> {
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let (net_tx, mut net_task) = net::spawn(server, events_tx.clone());
    let mut net_running = true;
    let term_task = tokio::spawn(terminal_events(events_tx));

    let size = terminal.size()?;
    let mut actions = initial;
    actions.extend(app.update(Event::Resize {
        width: size.width,
        height: size.height,
    }));
    loop {
        if perform(&mut actions, &net_tx, terminal)? {
            break;
        }
        terminal.draw(|frame| ui::draw(frame, &app))?;
        // What was just drawn is on screen: acknowledge it (at most one `ack` a frame).
        let mut acks = app.on_drawn();
        if perform(&mut acks, &net_tx, terminal)? {
            break;
        }
        let event = tokio::select! {
            event = events.recv() => event,
            // The network task ends only when asked to, unless it failed: say so rather
            // than showing a connection that is not there.
            end = &mut net_task, if net_running => {
                net_running = false;
                let reason = match end {
                    Err(e) if e.is_panic() => "the network task failed (see the log)",
                    _ => "the network task stopped",
                };
                warn!(reason, "network task ended");
                Some(Event::Net(NetEvent::Offline {
                    reason: reason.into(),
                    at_ms: net::now_ms(),
                }))
            }
        };
        let Some(event) = event else {
            break;
        };
        actions.extend(app.update(event));
        // Apply a burst of events before drawing once.
        for _ in 0..EVENTS_PER_FRAME {
            match events.try_recv() {
                Ok(event) => actions.extend(app.update(event)),
                Err(_) => break,
            }
        }
    }
    term_task.abort();
    drop(net_tx);
    if net_running {
        let _ = tokio::time::timeout(QUIT_TIMEOUT, net_task).await;
    }
    Ok(())
}

/// Carries out actions; true when the application must quit.
fn perform(
    actions: &mut Vec<Action>,
    net: &mpsc::UnboundedSender<NetRequest>,
    terminal: &mut Tui,
) -> io::Result<bool> {
    let mut quit = false;
    for action in actions.drain(..) {
        match action {
            Action::Net(request) => {
                if net.send(request).is_err() {
                    warn!("network task gone");
                }
            }
            Action::Bell => {
                let out = terminal.backend_mut();
                out.write_all(b"\x07")?;
                out.flush()?;
            }
            Action::Redraw => terminal.clear()?,
            Action::Quit => quit = true,
        }
    }
    Ok(quit)
}

/// The terminal task: forwards key, mouse, paste and resize events.
async fn terminal_events(tx: mpsc::Sender<Event>) {
    let mut stream = crossterm::event::EventStream::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if let Some(event) = Event::from_terminal(event)
                    && tx.send(event).await.is_err()
                {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read the terminal");
                return;
            }
        }
    }
}
