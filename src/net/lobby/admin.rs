//! What an operator can do to a running server (the admin HTTP routes call these through the
//! simulation thread): list sessions and players, end a session, kick a player, announce a
//! message. Each action is logged with the operator's name.

use apexsim_systems::prelude::FinishReason;
use thiserror::Error;
use uuid::Uuid;

use super::{ConnId, Effect, Kind, Lobby, Output, Phase, To};
use crate::content::StartMode;
use crate::net::protocol::{CloseReason, ServerMessage, SessionState, code};

/// Longest announcement, in characters.
pub const MAX_ANNOUNCEMENT: usize = 500;

/// Why an operator's action was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminError {
    /// No such session.
    #[error("no session {0}")]
    NoSession(Uuid),
    /// No such player connected.
    #[error("no player {0} is connected")]
    NoPlayer(Uuid),
    /// The session's race is already over or ending.
    #[error("session {0} is already over")]
    Over(Uuid),
    /// The message is empty or too long.
    #[error("the message must be 1 to {MAX_ANNOUNCEMENT} characters")]
    BadMessage,
}

/// A player, as the operator sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdminPlayer {
    /// Player id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The session joined.
    pub session: Option<Uuid>,
    /// The server's connection number.
    pub connection: ConnId,
}

/// A session, as the operator sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdminSession {
    /// Id.
    pub id: Uuid,
    /// Lobby, countdown, racing or finished.
    pub state: SessionState,
    /// Track slug.
    pub track: String,
    /// The template's name, if made from one.
    pub template: Option<String>,
    /// Made by the rotation.
    pub rotation: bool,
    /// How it starts.
    pub start_mode: StartMode,
    /// A scheduled session's start, Unix seconds.
    pub starts_at_unix_s: Option<i64>,
    /// Laps.
    pub lap_limit: u8,
    /// Grid size.
    pub max_players: u8,
    /// Cars on the grid (once started).
    pub cars: usize,
    /// Its humans.
    pub players: Vec<AdminPlayer>,
}

/// Everything the operator lists.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Overview {
    /// Every session.
    pub sessions: Vec<AdminSession>,
    /// Every connected player.
    pub players: Vec<AdminPlayer>,
}

impl Lobby {
    /// The sessions and players, at tick `now`.
    pub fn overview(&self, now: u64) -> Overview {
        let players: Vec<AdminPlayer> = self
            .players
            .iter()
            .map(|(&connection, p)| AdminPlayer {
                id: p.id,
                name: p.name.clone(),
                session: p.session,
                connection,
            })
            .collect();
        let sessions = self
            .sessions
            .iter()
            .map(|s| AdminSession {
                id: s.id,
                state: s.state(now),
                track: s.track.slug.clone(),
                template: s.template.as_ref().map(|t| t.name.clone()),
                rotation: s.kind == Kind::Rotation,
                start_mode: s.start_mode(),
                starts_at_unix_s: match s.kind {
                    Kind::Scheduled { at } => Some(at),
                    _ => None,
                },
                lap_limit: s.lap_limit,
                max_players: s.max_players,
                cars: s.grid.len(),
                players: players
                    .iter()
                    .filter(|p| p.session == Some(s.id))
                    .cloned()
                    .collect(),
            })
            .collect();
        Overview { sessions, players }
    }

    /// Ends a session now: a race is classified as it stands and archived, its results saying
    /// who ended it; a session still in its lobby is closed and its players sent back to the
    /// lobby.
    ///
    /// # Errors
    /// [`AdminError::NoSession`], or [`AdminError::Over`] for a race already over or ending.
    pub fn admin_end(&mut self, session: Uuid, by: &str) -> Result<(), AdminError> {
        let k = self
            .sessions
            .iter()
            .position(|s| s.id == session)
            .ok_or(AdminError::NoSession(session))?;
        let s = &mut self.sessions[k];
        match s.phase {
            Phase::Finished { .. } => Err(AdminError::Over(session)),
            Phase::Running { .. } if s.ending => Err(AdminError::Over(session)),
            Phase::Running { .. } => {
                tracing::warn!(%session, operator = %by, "admin: session ended");
                s.ending = true;
                s.ended_by = Some(format!("ended by admin {by}"));
                self.out.push_back(Output::World(Effect::EndRace {
                    session,
                    reason: FinishReason::Fault(format!("ended by admin {by}")),
                }));
                Ok(())
            }
            Phase::Lobby => {
                tracing::warn!(%session, operator = %by, "admin: session closed in its lobby");
                let conns = self.session_conns(session);
                self.sessions.remove(k);
                for c in &conns {
                    if let Some(p) = self.players.get_mut(c) {
                        p.session = None;
                    }
                }
                if !conns.is_empty() {
                    self.send(
                        To::Many(conns.clone()),
                        ServerMessage::Error {
                            code: code::CONFLICT,
                            message: format!("session {session} was closed by admin {by}"),
                        },
                    );
                    self.send(To::Many(conns), ServerMessage::SessionLeft);
                }
                self.out
                    .push_back(Output::World(Effect::RemoveSession { session }));
                self.lobby_dirty = true;
                Ok(())
            }
        }
    }

    /// Disconnects a player, telling them why; a racing car goes to the AI.
    ///
    /// # Errors
    /// [`AdminError::NoPlayer`] when no connection has that player.
    pub fn admin_kick(&mut self, player: Uuid, reason: &str, by: &str) -> Result<(), AdminError> {
        let conn = self
            .players
            .iter()
            .find(|(_, p)| p.id == player)
            .map(|(&c, _)| c)
            .ok_or(AdminError::NoPlayer(player))?;
        tracing::warn!(%player, conn, operator = %by, %reason, "admin: player kicked");
        self.send(
            To::One(conn),
            ServerMessage::Error {
                code: code::FORBIDDEN,
                message: format!("kicked by admin {by}: {reason}"),
            },
        );
        self.disconnect(conn);
        self.out.push_back(Output::Close {
            conn,
            reason: CloseReason::Kicked,
        });
        Ok(())
    }

    /// Sends a message to every player, or to one session's; returns how many it reached.
    ///
    /// # Errors
    /// [`AdminError::BadMessage`] for an empty or overlong message, [`AdminError::NoSession`].
    pub fn admin_announce(
        &mut self,
        session: Option<Uuid>,
        message: &str,
        by: &str,
    ) -> Result<usize, AdminError> {
        let message = message.trim();
        if message.is_empty() || message.chars().count() > MAX_ANNOUNCEMENT {
            return Err(AdminError::BadMessage);
        }
        let to = match session {
            Some(id) => {
                if !self.sessions.iter().any(|s| s.id == id) {
                    return Err(AdminError::NoSession(id));
                }
                To::Many(self.session_conns(id))
            }
            None => To::Everyone,
        };
        let reached = match &to {
            To::Many(c) => c.len(),
            _ => self.players.len(),
        };
        tracing::info!(session = ?session, operator = %by, %message, reached, "admin: announcement");
        self.send(
            to,
            ServerMessage::Announcement {
                session_id: session,
                message: message.to_owned(),
            },
        );
        Ok(reached)
    }
}

/// An operator's request, as the admin routes pass it to the simulation thread.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminRequest {
    /// Sessions and players.
    Overview,
    /// [`Lobby::admin_end`].
    End {
        /// The session.
        session: Uuid,
        /// The operator.
        by: String,
    },
    /// [`Lobby::admin_kick`].
    Kick {
        /// The player.
        player: Uuid,
        /// Told to the player.
        reason: String,
        /// The operator.
        by: String,
    },
    /// [`Lobby::admin_announce`].
    Announce {
        /// One session's players, or everyone.
        session: Option<Uuid>,
        /// The text.
        message: String,
        /// The operator.
        by: String,
    },
}

/// What an operator's request did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum AdminReply {
    /// The sessions and players.
    Overview(Overview),
    /// Done.
    Done {
        /// Always true.
        ok: bool,
    },
    /// An announcement, with the players it reached.
    Announced {
        /// Players reached.
        reached: usize,
    },
}

impl Lobby {
    /// Carries out an operator's request at tick `now`.
    ///
    /// # Errors
    /// [`AdminError`] from the action.
    pub fn admin(&mut self, now: u64, request: AdminRequest) -> Result<AdminReply, AdminError> {
        match request {
            AdminRequest::Overview => Ok(AdminReply::Overview(self.overview(now))),
            AdminRequest::End { session, by } => self
                .admin_end(session, &by)
                .map(|()| AdminReply::Done { ok: true }),
            AdminRequest::Kick { player, reason, by } => self
                .admin_kick(player, &reason, &by)
                .map(|()| AdminReply::Done { ok: true }),
            AdminRequest::Announce {
                session,
                message,
                by,
            } => self
                .admin_announce(session, &message, &by)
                .map(|reached| AdminReply::Announced { reached }),
        }
    }
}
