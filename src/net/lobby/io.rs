//! What the lobby core says and reads: its outputs (messages to deliver, connections to
//! close, effects on the world) and the view of the world it reads each tick.

use std::sync::Arc;

use apexsim_systems::prelude::FinishReason;
use uuid::Uuid;

use super::ConnId;
use crate::content::{CarContent, TrackContent};
use crate::net::protocol::{CloseReason, FaultKind, ServerMessage, Standing};

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq)]
pub enum To {
    /// One connection.
    One(ConnId),
    /// Several connections (one encoding for all).
    Many(Vec<ConnId>),
    /// Every connected player.
    Everyone,
}

/// A car of a grid the shell is to place.
#[derive(Debug, Clone, PartialEq)]
pub struct GridSlot {
    /// Index in the session (grid position - 1).
    pub car_index: u8,
    /// Driver name.
    pub name: String,
    /// The car model, as it was when the grid was made.
    pub car: Arc<CarContent>,
    /// The human driving it, `None` for the AI.
    pub driver: Option<(Uuid, ConnId)>,
}

/// What the world is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Spawn a session entity.
    CreateSession {
        /// Its id.
        session: Uuid,
        /// The track, as it was when the session was made.
        track: Arc<TrackContent>,
        /// Laps.
        lap_limit: u16,
    },
    /// Despawn a session and its cars.
    RemoveSession {
        /// Which.
        session: Uuid,
    },
    /// Place the grid (AI paces from the seeded generator, in grid order), start the
    /// countdown and begin recording.
    StartRace {
        /// Which.
        session: Uuid,
        /// The session's track.
        track: Arc<TrackContent>,
        /// Laps.
        lap_limit: u16,
        /// The template the session was made from, recorded with it.
        template: Option<Uuid>,
        /// The cars, by index.
        grid: Vec<GridSlot>,
    },
    /// The human of this car left: the AI drives it from now on.
    HandToAi {
        /// The session.
        session: Uuid,
        /// The car.
        car_index: u8,
    },
    /// End a race now.
    EndRace {
        /// Which.
        session: Uuid,
        /// Why.
        reason: FinishReason,
    },
    /// A drill's fault.
    InjectFault {
        /// The session.
        session: Uuid,
        /// The fault.
        kind: FaultKind,
        /// The car of the player who asked, if any.
        car_index: Option<u8>,
    },
    /// A race is over and its players have its results: archive them, stop taking inputs.
    SessionEnded {
        /// Which.
        session: Uuid,
        /// The classification.
        standings: Vec<Standing>,
        /// Why it ended abnormally.
        fault: Option<String>,
        /// Who ended it early, when an operator did.
        ended_by: Option<String>,
    },
}

/// What the lobby wants done, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Deliver a control message.
    Send {
        /// Recipients.
        to: To,
        /// The message.
        msg: ServerMessage,
    },
    /// Close a connection (the lobby has already forgotten it).
    Close {
        /// Which.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// Change the world.
    World(Effect),
}

/// A car's progress, as the drain needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarLap {
    /// The lap it is on.
    pub lap: u16,
    /// Whether it took the chequered flag.
    pub finished: bool,
}

/// What the lobby reads of the world each tick.
pub trait RaceView {
    /// How the session's race ended, once it has.
    fn finished(&self, session: Uuid) -> Option<FinishReason>;
    /// The session's classification, winner first.
    fn standings(&self, session: Uuid) -> Vec<Standing>;
    /// Each car's lap, by index.
    fn laps(&self, session: Uuid) -> Vec<CarLap>;
}

/// How many of what the lobby holds, for the gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Authenticated connections.
    pub players: usize,
    /// Sessions in any state.
    pub sessions: usize,
    /// Sessions counting down or racing.
    pub running: usize,
    /// Cars on the grids of those sessions and finished ones.
    pub cars: usize,
}
