//! The README lists every key and command the help overlay lists, and its screen capture
//! is the current 80×24 snapshot.

use simpletextim_tui::ui::help::{COMMANDS, KEYS};

#[test]
fn readme_lists_every_key_and_command() {
    let readme = include_str!("../README.md");
    for (key, _) in KEYS {
        assert!(
            readme.contains(&format!("| {key} |")),
            "README.md lacks the key {key:?}"
        );
    }
    for (command, _) in COMMANDS {
        assert!(
            readme.contains(&format!("| `{command}` |")),
            "README.md lacks the command {command:?}"
        );
    }
    for command in simpletextim_tui::app::command_names() {
        assert!(
            COMMANDS
                .iter()
                .any(|(c, _)| c.split(' ').next() == Some(command)),
            "the help lacks {command}"
        );
    }
}

#[test]
fn readme_capture_is_the_current_snapshot() {
    let readme = include_str!("../README.md");
    let snapshot = include_str!("snapshots/render__chat_80x24.snap");
    // The snapshot body: after the `---` header, one quoted row per line.
    let body = snapshot.splitn(3, "---").nth(2).unwrap_or_default();
    let capture: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with('"'))
        .map(|l| {
            let row = l
                .split(" Hidden by multi-width symbols")
                .next()
                .unwrap_or(l);
            row.trim_matches('"').trim_end().to_owned()
        })
        .collect();
    assert_eq!(capture.len(), 24);
    let expected = format!("```text\n{}\n```", capture.join("\n"));
    assert!(
        readme.contains(&expected),
        "README.md's capture differs from tests/snapshots/render__chat_80x24.snap; paste:\n{expected}"
    );
}
