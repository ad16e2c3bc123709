//! The login screen: the form's state and its keys. Submitting asks the network task to
//! log in; [`super::net`] handles the answer.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use simpletextim_proto::{Password, UserId};

use super::keys::edit_key;
use super::state::{Action, App, Connection, LoginField};
use crate::event::NetRequest;

impl App {
    /// Starts logging in with known credentials (password from the environment or a file).
    pub fn login_with(&mut self, user: &str, password: &str) -> Vec<Action> {
        self.login.user.set_text(user);
        self.login.password.set_text(password);
        self.submit_login()
    }

    /// A key on the login screen.
    pub(super) fn on_login_key(&mut self, key: KeyEvent) -> Vec<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d'))
            || key.code == KeyCode::Esc
        {
            return self.quit();
        }
        if self.login.busy {
            return Vec::new();
        }
        match key.code {
            KeyCode::Tab | KeyCode::BackTab | KeyCode::Up | KeyCode::Down => {
                self.login.focus = match self.login.focus {
                    LoginField::User => LoginField::Password,
                    LoginField::Password => LoginField::User,
                };
            }
            KeyCode::Enter => {
                if self.login.focus == LoginField::User && self.login.password.is_empty() {
                    self.login.focus = LoginField::Password;
                } else {
                    return self.submit_login();
                }
            }
            _ => {
                let editor = match self.login.focus {
                    LoginField::User => &mut self.login.user,
                    LoginField::Password => &mut self.login.password,
                };
                edit_key(editor, key);
            }
        }
        Vec::new()
    }

    /// Checks the form and asks the network task to log in.
    fn submit_login(&mut self) -> Vec<Action> {
        let user = match UserId::new(self.login.user.text().trim()) {
            Ok(u) => u,
            Err(f) => {
                self.login.error = Some(f.reason);
                self.login.focus = LoginField::User;
                return Vec::new();
            }
        };
        let password = match Password::new(&self.login.password.text()) {
            Ok(p) => p,
            Err(f) => {
                self.login.error = Some(f.reason);
                self.login.focus = LoginField::Password;
                return Vec::new();
            }
        };
        self.login.busy = true;
        self.login.error = None;
        self.connection = Connection::Connecting;
        vec![Action::Net(NetRequest::Login { user, password })]
    }
}
