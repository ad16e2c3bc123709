//! The README lists every key and command the help overlay lists.

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
    for command in simpletextim_tui::app::COMMANDS {
        assert!(
            COMMANDS
                .iter()
                .any(|(c, _)| c.split(' ').next() == Some(command)),
            "the help lacks {command}"
        );
    }
}
