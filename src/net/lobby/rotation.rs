//! Sessions that run themselves (seed 003 section 9): the rotation keeps one session of a
//! template open, picked by `rotation_weight`; scheduled templates get a session announced
//! [`ANNOUNCE_AHEAD_S`] before their cron time that starts at it; countdown sessions start
//! once `min_players` humans are in and the lobby window has passed. And custom sessions made
//! from a template, with the lap limit and AI count a player may change within its bounds.

use std::sync::Arc;

use apexsim_systems::SimRng;
use uuid::Uuid;

use super::{ConnId, Kind, Lobby, NewSession, Phase};
use crate::content::{RaceTemplate, StartMode};
use crate::net::protocol::code;

/// How long before its time a scheduled session is made and announced, in seconds.
pub const ANNOUNCE_AHEAD_S: i64 = 5 * 60;

/// Whether the rotation may pick `t`: active, with a weight, and not scheduled (scheduled
/// templates run at their times instead).
pub fn in_rotation(t: &RaceTemplate) -> bool {
    t.active && t.rotation_weight > 0 && t.start_mode != StartMode::Scheduled
}

/// Picks the next rotation template, each with a chance proportional to its
/// `rotation_weight` among those [`in_rotation`]; `None` when there is none.
pub fn pick_template<'a>(
    templates: &'a [Arc<RaceTemplate>],
    rng: &mut SimRng,
) -> Option<&'a Arc<RaceTemplate>> {
    let total: u64 = templates
        .iter()
        .filter(|t| in_rotation(t))
        .map(|t| u64::from(t.rotation_weight))
        .sum();
    if total == 0 {
        return None;
    }
    // Multiply-shift: uniform in 0..total without a modulo bias worth the name.
    let mut r = ((u128::from(rng.next_u64()) * u128::from(total)) >> 64) as u64;
    templates.iter().filter(|t| in_rotation(t)).find(|t| {
        let w = u64::from(t.rotation_weight);
        if r < w {
            true
        } else {
            r -= w;
            false
        }
    })
}

impl Lobby {
    /// A session of `template`, made by the server (`kind`) at `now`.
    fn session_of_template(&mut self, now: u64, kind: Kind, t: &Arc<RaceTemplate>) -> Option<Uuid> {
        let Some(track) = self.content.track_by_id(t.track_id).cloned() else {
            tracing::warn!(template = %t.name, "the template's track is not loaded");
            return None;
        };
        Some(self.new_session(NewSession {
            now,
            kind,
            track,
            template: Some(t.clone()),
            host: None,
            max_players: t.max_players,
            ai_count: t.default_ai_count,
            lap_limit: t.lap_limit,
        }))
    }

    /// Makes the rotation's next session when none is open (in its lobby or racing).
    pub(super) fn rotate(&mut self, now: u64) {
        if self.sessions.len() >= self.config.max_sessions
            || self
                .sessions
                .iter()
                .any(|s| s.kind == Kind::Rotation && !matches!(s.phase, Phase::Finished { .. }))
        {
            return;
        }
        let content = self.content.clone();
        let asked = self.next_template.take();
        let Some(t) = asked
            .as_ref()
            .or_else(|| pick_template(&content.templates, &mut self.rng))
        else {
            return;
        };
        if let Some(id) = self.session_of_template(now, Kind::Rotation, t) {
            tracing::info!(session = %id, template = %t.name, "rotation: next session open");
        }
    }

    /// Makes the rotation's next session one of the template `slug_or_name` names (its file
    /// name or display name), whatever the weights say; an allocation asks for it. `false`
    /// (and nothing changes) when no template [`in_rotation`] has that name (a scheduled
    /// template runs at its times only).
    pub fn next_template(&mut self, slug_or_name: &str) -> bool {
        let found = self
            .content
            .templates
            .iter()
            .find(|t| in_rotation(t) && (t.slug == slug_or_name || t.name == slug_or_name))
            .cloned();
        match found {
            Some(t) => {
                tracing::info!(template = %t.name, "rotation: the next session is of the allocated template");
                self.next_template = Some(t);
                true
            }
            None => {
                tracing::warn!(template = %slug_or_name, "rotation: no template in the rotation has that name");
                false
            }
        }
    }

    /// Announces each scheduled template's next session [`ANNOUNCE_AHEAD_S`] before its time.
    pub(super) fn run_schedule(&mut self, now: u64) {
        let wall = self.wall_s;
        let content = self.content.clone();
        for t in content.templates.iter().filter(|t| t.active) {
            let Some(schedule) = &t.schedule else {
                continue;
            };
            let next = *self
                .schedule
                .entry(t.id)
                .or_insert_with(|| schedule.next_at_or_after(wall).unwrap_or(i64::MAX));
            if wall < next.saturating_sub(ANNOUNCE_AHEAD_S) {
                continue;
            }
            // This occurrence is handled now, whatever happens; the next one is queued.
            let after = schedule
                .next_at_or_after(next.saturating_add(1))
                .unwrap_or(i64::MAX);
            self.schedule.insert(t.id, after);
            let announced = self.sessions.iter().any(|s| {
                s.kind == (Kind::Scheduled { at: next })
                    && s.template.as_ref().is_some_and(|x| x.id == t.id)
            });
            if announced {
                continue;
            }
            if self.sessions.len() >= self.config.max_sessions {
                tracing::warn!(template = %t.name, at = next, "scheduled session skipped: the server holds its maximum of sessions");
                continue;
            }
            if let Some(id) = self.session_of_template(now, Kind::Scheduled { at: next }, t) {
                tracing::info!(session = %id, template = %t.name, starts_at = next, "scheduled session announced");
            }
        }
    }

    /// Starts the sessions that start by themselves: countdown sessions with `min_players`
    /// humans once their lobby window passed, scheduled ones at their time.
    pub(super) fn auto_start(&mut self, now: u64) {
        let window = self.config.lobby_window_ticks;
        let wall = self.wall_s;
        let due: Vec<usize> = self
            .sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.phase == Phase::Lobby)
            .filter(|(_, s)| match (s.kind, s.start_mode()) {
                (Kind::Scheduled { at }, _) => wall >= at,
                (Kind::Rotation, StartMode::Countdown) => {
                    let min = s.template.as_ref().map_or(1, |t| t.min_players);
                    now >= s.created + window && s.roster.len() >= usize::from(min)
                }
                _ => false,
            })
            .map(|(k, _)| k)
            .collect();
        for k in due {
            tracing::info!(session = %self.sessions[k].id, mode = ?self.sessions[k].start_mode(), "session starts by itself");
            self.begin(now, k);
        }
    }

    /// `CreateFromTemplate`: a custom session of the template's track, grid and cars, the lap
    /// limit and AI count within its bounds; the player hosts it and starts it.
    pub(super) fn create_from_template(
        &mut self,
        now: u64,
        conn: ConnId,
        template_id: Uuid,
        lap_limit: Option<u8>,
        ai_count: Option<u8>,
    ) {
        if let Some((code, message)) = self.refuse_create(conn) {
            return self.error(conn, code, message);
        }
        let Some(t) = self.content.template_by_id(template_id).cloned() else {
            return self.error(
                conn,
                code::NOT_FOUND,
                format!("unknown template {template_id}"),
            );
        };
        if !t.active {
            let why = if t.enabled {
                "its track or one of its cars is not loaded"
            } else {
                "it is disabled (active = false)"
            };
            return self.error(
                conn,
                code::CONFLICT,
                format!("template {} is inactive: {why}", t.name),
            );
        }
        let bounded = |field: &str, v: Option<u8>, default: u8, (lo, hi): (u8, u8)| match v {
            None => Ok(default),
            Some(v) if (lo..=hi).contains(&v) => Ok(v),
            Some(v) => Err(format!(
                "{field} = {v}: template {} allows {lo}..={hi}",
                t.name
            )),
        };
        let checked =
            bounded("lap_limit", lap_limit, t.lap_limit, t.lap_limit_bounds).and_then(|laps| {
                bounded("ai_count", ai_count, t.default_ai_count, t.ai_count_bounds)
                    .map(|ai| (laps, ai))
            });
        let (lap_limit, ai_count) = match checked {
            Ok(v) => v,
            Err(message) => return self.error(conn, code::BAD_REQUEST, message),
        };
        let Some(track) = self.content.track_by_id(t.track_id).cloned() else {
            return self.error(conn, code::NOT_FOUND, "the template's track is not loaded");
        };
        if let Some(car) = self.car_of(conn).filter(|c| !t.allows(c.id)) {
            let message = self.not_allowed(&t, car.id);
            return self.error(conn, code::BAD_REQUEST, message);
        }
        let max_players = t.max_players;
        let id = self.new_session(NewSession {
            now,
            kind: Kind::Custom,
            track,
            template: Some(t),
            host: Some(conn),
            max_players,
            ai_count,
            lap_limit,
        });
        self.join(conn, id);
    }
}
