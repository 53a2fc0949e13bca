//! Collision between cars of the same session: rotated boxes (oriented bounding boxes tested
//! on their four separating axes), separation along the axis of least penetration, a 20 % speed
//! loss when a contact begins, and the `is_colliding` flag. Runs after physics, before timing.
//!
//! All active cars of all sessions are gathered in one pass, ordered by (session, car index)
//! and tested pairwise within each session after a bounding-circle check, then written back in
//! a second pass in query order. The order is explicit, so the result does not depend on where
//! bevy's tables happen to keep the cars.

use bevy_app::prelude::*;
use bevy_ecs::prelude::*;

use crate::car::{Active, CarIndex, CarSpec, InSession, Motion, Pose, Simulated};
use crate::sim::SimSystems;

/// Share of speed kept when a contact begins (seed 003: 20 % energy loss).
pub const CONTACT_SPEED_FACTOR: f32 = 0.8;

/// An oriented box: centre, heading and half extents, in metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Obb {
    /// Centre X.
    pub x: f32,
    /// Centre Y.
    pub y: f32,
    /// Cosine of the heading.
    pub cos: f32,
    /// Sine of the heading.
    pub sin: f32,
    /// Half length (along the heading).
    pub half_length: f32,
    /// Half width.
    pub half_width: f32,
}

impl Obb {
    /// The collision box of a car.
    pub fn of_car(pose: &Pose, spec: &CarSpec) -> Self {
        let (sin, cos) = pose.yaw_rad.sin_cos();
        Self {
            x: pose.x_m,
            y: pose.y_m,
            cos,
            sin,
            half_length: spec.length_m * 0.5,
            half_width: spec.width_m * 0.5,
        }
    }

    /// Radius of the circle that contains the box.
    pub fn bounding_radius(&self) -> f32 {
        self.half_length.hypot(self.half_width)
    }

    /// Half the extent of the box projected on unit axis `(nx, ny)`.
    #[inline]
    fn radius_on(&self, nx: f32, ny: f32) -> f32 {
        self.half_length * (self.cos * nx + self.sin * ny).abs()
            + self.half_width * (-self.sin * nx + self.cos * ny).abs()
    }
}

/// How two boxes overlap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contact {
    /// Unit normal pointing from the first box to the second.
    pub normal: [f32; 2],
    /// Penetration depth along the normal in metres (> 0).
    pub depth_m: f32,
}

/// Separating-axis test of two oriented boxes. `None` when they do not overlap.
pub fn obb_contact(a: &Obb, b: &Obb) -> Option<Contact> {
    let dx = b.x - a.x;
    let dy = b.y - a.y;
    let axes = [
        [a.cos, a.sin],
        [-a.sin, a.cos],
        [b.cos, b.sin],
        [-b.sin, b.cos],
    ];
    let mut best = Contact {
        normal: [1.0, 0.0],
        depth_m: f32::INFINITY,
    };
    for [nx, ny] in axes {
        let dist = dx * nx + dy * ny;
        let overlap = a.radius_on(nx, ny) + b.radius_on(nx, ny) - dist.abs();
        if overlap <= 0.0 {
            return None;
        }
        if overlap < best.depth_m {
            let sign = if dist < 0.0 { -1.0 } else { 1.0 };
            best = Contact {
                normal: [nx * sign, ny * sign],
                depth_m: overlap,
            };
        }
    }
    Some(best)
}

/// Contact flag of a car, as in seed 003's `is_colliding`.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CollisionState {
    /// True while the car's box overlaps another car's.
    pub is_colliding: bool,
    /// Contacts begun since the car spawned.
    pub contacts: u32,
}

/// Two cars of one session began touching.
#[derive(Message, Debug, Clone, Copy, PartialEq)]
pub struct CarsCollided {
    /// The session.
    pub session: Entity,
    /// First car (lower car index).
    pub a: Entity,
    /// Second car.
    pub b: Entity,
    /// Penetration depth in metres before separation.
    pub depth_m: f32,
}

/// Per-car working data of one collision pass.
#[derive(Debug, Clone, Copy)]
struct Body {
    session: u64,
    index: u8,
    entity: Entity,
    session_entity: Entity,
    x: f32,
    y: f32,
    yaw: f32,
    half_length: f32,
    half_width: f32,
    radius: f32,
    was_colliding: bool,
    colliding: bool,
    push: [f32; 2],
}

impl Body {
    fn obb(&self) -> Obb {
        let (sin, cos) = self.yaw.sin_cos();
        Obb {
            x: self.x,
            y: self.y,
            cos,
            sin,
            half_length: self.half_length,
            half_width: self.half_width,
        }
    }
}

/// Reusable buffers of the collision system (kept between ticks so a tick allocates nothing).
#[derive(Default)]
pub struct CollisionScratch {
    bodies: Vec<Body>,
    order: Vec<u32>,
    runs: Vec<(u64, std::ops::Range<usize>)>,
    px: Vec<f32>,
    py: Vec<f32>,
    pr: Vec<f32>,
}

/// Tests every pair of active cars within each session, separates overlapping cars, slows cars
/// whose contact just began, and maintains [`CollisionState`].
pub fn resolve_collisions(
    mut scratch: Local<CollisionScratch>,
    mut cars: Query<
        (
            Entity,
            &InSession,
            &CarIndex,
            &CarSpec,
            &mut Pose,
            &mut Motion,
            &mut CollisionState,
        ),
        With<Active>,
    >,
    mut collided: MessageWriter<CarsCollided>,
) {
    let CollisionScratch {
        bodies,
        order,
        runs,
        px,
        py,
        pr,
    } = &mut *scratch;
    bodies.clear();
    for (entity, session, index, spec, pose, _, state) in &cars {
        let (half_length, half_width) = (spec.length_m * 0.5, spec.width_m * 0.5);
        bodies.push(Body {
            session: session.0.to_bits(),
            index: index.0,
            entity,
            session_entity: session.0,
            x: pose.x_m,
            y: pose.y_m,
            yaw: pose.yaw_rad,
            half_length,
            half_width,
            radius: (half_length * half_length + half_width * half_width).sqrt(),
            was_colliding: state.is_colliding,
            colliding: false,
            push: [0.0, 0.0],
        });
    }
    order.clear();
    order.extend(0..bodies.len() as u32);
    // Group by session; within a session, pairs are tested in car index order.
    crate::sim::group_by_session(order, |i| bodies[i as usize].session, runs);
    // The broad phase reads positions from compact arrays in grouped order: each session's
    // pair loop touches a few cache lines instead of one body per pair.
    px.clear();
    py.clear();
    pr.clear();
    for &i in order.iter() {
        let b = &bodies[i as usize];
        px.push(b.x);
        py.push(b.y);
        pr.push(b.radius);
    }
    for (_, run) in runs.iter() {
        let (start, end) = (run.start, run.end);
        if !order[start..end].is_sorted_by_key(|&i| bodies[i as usize].index) {
            order[start..end].sort_unstable_by_key(|&i| bodies[i as usize].index);
            for k in start..end {
                let b = &bodies[order[k] as usize];
                (px[k], py[k], pr[k]) = (b.x, b.y, b.radius);
            }
        }
        for i in start..end {
            for j in i + 1..end {
                let reach = pr[i] + pr[j];
                let (dx, dy) = (px[j] - px[i], py[j] - py[i]);
                if dx * dx + dy * dy >= reach * reach {
                    continue;
                }
                let (ia, ib) = (order[i] as usize, order[j] as usize);
                let (a, b) = (&bodies[ia], &bodies[ib]);
                // Only close pairs pay for the boxes' orientation.
                let Some(contact) = obb_contact(&a.obb(), &b.obb()) else {
                    continue;
                };
                if !(a.was_colliding && b.was_colliding) {
                    collided.write(CarsCollided {
                        session: a.session_entity,
                        a: a.entity,
                        b: b.entity,
                        depth_m: contact.depth_m,
                    });
                }
                let half = contact.depth_m * 0.5;
                let [nx, ny] = contact.normal;
                let a = &mut bodies[ia];
                a.colliding = true;
                a.push[0] -= nx * half;
                a.push[1] -= ny * half;
                let b = &mut bodies[ib];
                b.colliding = true;
                b.push[0] += nx * half;
                b.push[1] += ny * half;
            }
        }
    }

    // Same query, same order as the gathering pass: no structural change happened in between.
    for ((_, _, _, _, mut pose, mut motion, mut state), body) in cars.iter_mut().zip(bodies.iter())
    {
        if body.colliding {
            pose.x_m += body.push[0];
            pose.y_m += body.push[1];
            if !body.was_colliding {
                motion.speed_mps *= CONTACT_SPEED_FACTOR;
                state.contacts += 1;
            }
        }
        if state.is_colliding != body.colliding {
            state.is_colliding = body.colliding;
        }
    }
}

/// The collision systems.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CollisionSystems {
    /// Detects and resolves contacts.
    Resolve,
}

/// Registers collision in [`SimSystems::Collision`] and the [`CarsCollided`] message.
pub struct CollisionPlugin;

impl Plugin for CollisionPlugin {
    fn build(&self, app: &mut App) {
        // Simulated cars collide; cars played back from a recording do not.
        app.register_required_components::<Simulated, CollisionState>()
            .add_message::<CarsCollided>()
            .configure_sets(
                FixedUpdate,
                CollisionSystems::Resolve.in_set(SimSystems::Collision),
            )
            .add_systems(
                FixedUpdate,
                resolve_collisions.in_set(CollisionSystems::Resolve),
            );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obb(x: f32, y: f32, yaw: f32) -> Obb {
        let (sin, cos) = f32::sin_cos(yaw);
        Obb {
            x,
            y,
            cos,
            sin,
            half_length: 2.25,
            half_width: 1.0,
        }
    }

    #[test]
    fn side_by_side_cars_overlap_by_the_right_depth() {
        let c = obb_contact(&obb(0.0, 0.0, 0.0), &obb(0.0, 1.5, 0.0)).expect("overlap");
        assert!((c.depth_m - 0.5).abs() < 1e-5, "{c:?}");
        assert!(
            (c.normal[1] - 1.0).abs() < 1e-5,
            "normal points from a to b: {c:?}"
        );
        assert!(obb_contact(&obb(0.0, 0.0, 0.0), &obb(0.0, 2.01, 0.0)).is_none());
        // Nose to tail: overlap along the length.
        let c = obb_contact(&obb(0.0, 0.0, 0.0), &obb(-4.0, 0.0, 0.0)).expect("overlap");
        assert!((c.depth_m - 0.5).abs() < 1e-5 && c.normal[0] < 0.0, "{c:?}");
    }

    #[test]
    fn rotation_matters_where_axis_aligned_boxes_would_lie() {
        // Two cars 3.2 m apart diagonally. Rotated 45° to face each other's side they miss;
        // their axis-aligned bounding boxes would overlap.
        let a = obb(0.0, 0.0, std::f32::consts::FRAC_PI_4);
        let b = obb(2.3, -2.3, std::f32::consts::FRAC_PI_4);
        assert!(obb_contact(&a, &b).is_none());
        // Aligned with the diagonal they touch end to end.
        let a = obb(0.0, 0.0, -std::f32::consts::FRAC_PI_4);
        let b = obb(2.3, -2.3, -std::f32::consts::FRAC_PI_4);
        assert!(obb_contact(&a, &b).is_some());
    }

    #[test]
    fn contact_is_symmetric() {
        let a = obb(0.3, 0.1, 0.4);
        let b = obb(1.9, 1.2, -0.7);
        let ab = obb_contact(&a, &b).expect("overlap");
        let ba = obb_contact(&b, &a).expect("overlap");
        assert!((ab.depth_m - ba.depth_m).abs() < 1e-5);
        assert!((ab.normal[0] + ba.normal[0]).abs() < 1e-5);
        assert!((ab.normal[1] + ba.normal[1]).abs() < 1e-5);
    }
}
