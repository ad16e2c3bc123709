//! The login screen: the form's state and its keys. Submitting asks the network task to
//! log in; [`super::net`] handles the answer.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use simpletextim_proto::{Password, UserId};

use super::keys::edit_key;
use super::{Action, App, Connection};
use crate::event::NetRequest;
use crate::input::LineEditor;

/// The field of the login form that has the focus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginField {
    /// The user id.
    User,
    /// The password (shown masked).
    Password,
}

/// The login form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginForm {
    /// The user id being typed.
    pub user: LineEditor,
    /// The password being typed.
    pub password: LineEditor,
    /// Which field has the focus.
    pub focus: LoginField,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// An attempt is under way.
    pub busy: bool,
}

impl LoginForm {
    /// An empty form, with the user id pre-filled (and the focus on the password) when
    /// given.
    pub(super) fn new(user: Option<&str>) -> LoginForm {
        let mut login_user = LineEditor::new();
        let mut focus = LoginField::User;
        if let Some(u) = user {
            login_user.set_text(u);
            focus = LoginField::Password;
        }
        LoginForm {
            user: login_user,
            password: LineEditor::new(),
            focus,
            error: None,
            busy: false,
        }
    }
}

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
