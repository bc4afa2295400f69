//! The domain types: users, tokens, apps, deployments, log lines, and their identifiers.
//!
//! These are what the rest of the service talks about. They do no I/O. How they are laid out on
//! disk is the store codec's business (`store::codec`), and how they look on the wire is the API's
//! (`api::views`); neither shape leaks in here.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::status::Status;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (UUIDv7) identifier.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// The 16 big-endian bytes used in store keys.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Inverse of [`Self::as_bytes`].
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// Identifies a user.
    UserId
);
uuid_id!(
    /// Identifies an API token (not the secret: the id is what `DELETE /v1/tokens/{id}` takes).
    TokenId
);
uuid_id!(
    /// Identifies an app.
    AppId
);
uuid_id!(
    /// Identifies a deployment. UUIDv7, so ids sort by creation time.
    DeploymentId
);

/// A log line number within one deployment. Numbers start at 1 and never repeat; 0 means
/// "no line yet" (resume "after line 0" reads from the start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LineNo(pub u64);

impl LineNo {
    /// The line number after this one.
    pub fn next(self) -> LineNo {
        LineNo(self.0 + 1)
    }
}

impl fmt::Display for LineNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub fullname: String,
    /// Admins may create users.
    pub is_admin: bool,
    pub created_at: OffsetDateTime,
}

/// An API token record. The secret itself is never stored: only its SHA-256 hash, which is the
/// record's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub id: TokenId,
    pub user_id: UserId,
    pub name: String,
    pub created_at: OffsetDateTime,
}

/// What an API token may do. Ordered: each scope allows everything the ones before it do.
///
/// The route table (`api::routes::ROUTES`) names the scope each route needs; a token without a
/// stored scope (every token made before scopes existed) is [`Scope::Full`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Sees everything its user sees (within its apps), changes nothing.
    Read,
    /// `Read`, and pushes, triggers and cancels deployments (what a CI job holds).
    Deploy,
    /// Everything its user may do.
    Full,
}

impl Scope {
    /// The wire name (`read`, `deploy`, `full`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Full => "full",
        }
    }

    /// Inverse of [`Scope::as_str`].
    pub fn parse(name: &str) -> Option<Scope> {
        [Scope::Read, Scope::Deploy, Scope::Full]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// A token's scope and the apps it is limited to.
///
/// Invariant: a [`Scope::Deploy`] grant always has `apps` (a deploy token names what it
/// deploys); `apps: None` means every app the user may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub scope: Scope,
    pub apps: Option<Vec<AppId>>,
}

impl Grant {
    /// What a token without a stored scope may do: everything.
    pub fn full() -> Grant {
        Grant {
            scope: Scope::Full,
            apps: None,
        }
    }

    /// Whether the grant covers `app` (its app list, when it has one, names it).
    pub fn covers(&self, app: AppId) -> bool {
        self.apps.as_ref().is_none_or(|apps| apps.contains(&app))
    }

    /// Whether `other` asks for nothing this grant does not allow: the same or a narrower scope,
    /// and apps within this grant's apps.
    pub fn includes(&self, other: &Grant) -> bool {
        other.scope <= self.scope
            && match (&self.apps, &other.apps) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(mine), Some(theirs)) => theirs.iter().all(|app| mine.contains(app)),
            }
    }
}

/// An app: a named target of deployments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    pub id: AppId,
    pub name: String,
    pub owner: UserId,
    /// URL of the app's repository; a deployment without `source_url` fetches from it.
    pub git_source: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub last_deployment: Option<LastDeployment>,
}

/// What the app object says about its most recent *successful* deployment (Scalingo's
/// `last_deployed_*`): set when a deployment reaches `success`, never by a failed one.
/// (Records written before that rule kept the most recently created deployment here.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastDeployment {
    pub id: DeploymentId,
    pub at: OffsetDateTime,
    pub by: String,
}

/// A user's collaboration on an app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collaborator {
    /// The collaboration's id (what `/collaborators/{id}` takes, besides the user id).
    pub id: Uuid,
    pub user: User,
    pub since: OffsetDateTime,
    /// A limited collaborator reads and deploys, but manages nothing (collaborators,
    /// notifiers, the app's name, its deletion).
    pub is_limited: bool,
}

/// The user who pushed a deployment, as embedded in it (a snapshot taken at creation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pusher {
    pub id: UserId,
    pub username: String,
    pub email: String,
}

/// Who drives a deployment (DESIGN.md: exactly one pusher session per deployment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Driver {
    /// An external builder connected over the push protocol.
    External,
    /// The built-in executor, fetching `source_url`.
    Executor {
        source_url: String,
        postdeploy_hook: Option<String>,
    },
}

/// One deployment of one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub id: DeploymentId,
    pub app_id: AppId,
    pub created_at: OffsetDateTime,
    pub status: Status,
    pub finished_at: Option<OffsetDateTime>,
    pub git_ref: String,
    pub previous_git_ref: Option<String>,
    pub pusher: Pusher,
    pub image_size: u64,
    pub driver: Driver,
    /// The last line number stored for this deployment (0 when it has no output).
    pub last_line: LineNo,
    /// Whether it can be rolled back to: `success` with its image still kept (an image record,
    /// `crate::images`). Not stored in the deployment record: the store fills it in on read
    /// (false in the writer's copies).
    pub image_kept: bool,
}

impl Deployment {
    /// Whole seconds from creation to the end (0 until finished), as the API reports it.
    pub fn duration_secs(&self) -> i64 {
        match self.finished_at {
            Some(end) => (end - self.created_at).whole_seconds().max(0),
            None => 0,
        }
    }

    /// The postdeploy hook the deployment was created with, if any.
    pub fn postdeploy_hook(&self) -> Option<&str> {
        match &self.driver {
            Driver::Executor {
                postdeploy_hook, ..
            } => postdeploy_hook.as_deref(),
            Driver::External => None,
        }
    }
}

/// Which output a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines written by deployd itself ("-----> Fetching source code", "aborted because …").
    System,
}

/// A log line handed to `append_logs`, before it has a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLine {
    pub stream: LogStream,
    pub text: String,
}

impl NewLine {
    pub fn stdout(text: impl Into<String>) -> Self {
        Self {
            stream: LogStream::Stdout,
            text: text.into(),
        }
    }

    pub fn stderr(text: impl Into<String>) -> Self {
        Self {
            stream: LogStream::Stderr,
            text: text.into(),
        }
    }

    pub fn system(text: impl Into<String>) -> Self {
        Self {
            stream: LogStream::System,
            text: text.into(),
        }
    }
}

/// Longest `git_ref` accepted (bytes), on every path that takes one: it is stored in every
/// deployment record and listed with it, so an unbounded one costs memory on every list.
pub const MAX_GIT_REF_BYTES: usize = 256;

/// The one rule for a deployment's `git_ref`, applied by every path that creates a deployment
/// (the REST trigger and the push socket's `start`): at most [`MAX_GIT_REF_BYTES`] bytes and no
/// control characters (NUL, escapes, newlines would corrupt terminals and logs that show it).
/// `Err` holds the message for the client.
pub fn check_git_ref(git_ref: &str) -> Result<(), String> {
    if git_ref.len() > MAX_GIT_REF_BYTES || git_ref.chars().any(char::is_control) {
        return Err(format!(
            "must be at most {MAX_GIT_REF_BYTES} bytes without control characters"
        ));
    }
    Ok(())
}

/// A new user and its first token (named "first token"), created at `now`. The token's secret
/// is the caller's to generate (`auth::generate_api_token`): it is shown once and stored only
/// as a hash.
pub fn new_user(
    username: String,
    email: String,
    fullname: String,
    is_admin: bool,
    now: OffsetDateTime,
) -> (User, Token) {
    let user = User {
        id: UserId::generate(),
        username,
        email,
        fullname,
        is_admin,
        created_at: now,
    };
    let token = Token {
        id: TokenId::generate(),
        user_id: user.id,
        name: "first token".into(),
        created_at: now,
    };
    (user, token)
}
