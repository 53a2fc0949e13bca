//! The host's metrics (seed 004's collector): CPU use and frequency per core, load averages,
//! memory, temperatures where the machine has sensors, and this process's CPU and memory, read
//! with `sysinfo`. A reading the machine cannot give is absent, never zero: no sensors, no
//! `temperatures`; no load average (Windows), no `load_average`.
//!
//! [`HostMonitor::sample`] reads the host; CPU use is measured over the time since the previous
//! sample (the first reads 0). [`HostMonitor::render`] writes the same reading as Prometheus
//! gauges (`apexsim_host_*`).

use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};
use serde::{Deserialize, Serialize};
use sysinfo::{Components, ProcessesToUpdate, System};

/// One core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CpuSample {
    /// The core's name as the OS gives it (`cpu0`).
    pub name: String,
    /// Use since the previous sample, percent of the core (0 to 100).
    pub usage_percent: f32,
    /// Current frequency, MHz (absent when the OS does not say).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub frequency_mhz: Option<u64>,
}

/// Load averages (run queue length), over 1, 5 and 15 minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoadAverage {
    /// 1 minute.
    pub one: f64,
    /// 5 minutes.
    pub five: f64,
    /// 15 minutes.
    pub fifteen: f64,
}

/// Memory, bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemorySample {
    /// Physical memory.
    pub total_bytes: u64,
    /// In use.
    pub used_bytes: u64,
    /// Available to new work.
    pub available_bytes: u64,
}

/// A temperature sensor's reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Temperature {
    /// The sensor's label.
    pub sensor: String,
    /// Degrees Celsius.
    pub celsius: f32,
}

/// This process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessSample {
    /// CPU use since the previous sample, percent of one core (above 100 on several).
    pub cpu_percent: f32,
    /// Resident memory, bytes.
    pub memory_bytes: u64,
}

/// One reading of the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostSample {
    /// Unix seconds.
    pub at: i64,
    /// Every core, in the OS's order.
    pub cpus: Vec<CpuSample>,
    /// Absent where the OS has none (Windows).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub load_average: Option<LoadAverage>,
    /// Memory.
    pub memory: MemorySample,
    /// Sensors that report a temperature; absent when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub temperatures: Vec<Temperature>,
    /// This process; absent when the OS does not say.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub process: Option<ProcessSample>,
}

/// Reads the host, keeping what CPU use is measured against.
pub struct HostMonitor {
    system: Option<System>,
    components: Option<Components>,
    pid: Option<sysinfo::Pid>,
    registry: Registry,
    gauges: Gauges,
}

struct Gauges {
    cpu_usage: GaugeVec,
    cpu_frequency: GaugeVec,
    load: GaugeVec,
    memory: GaugeVec,
    temperature: GaugeVec,
    process: GaugeVec,
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    // The names and labels are constants of this file: creating them cannot fail.
    let g = GaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = registry.register(Box::new(g.clone()));
    g
}

impl Default for HostMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl HostMonitor {
    /// A monitor; a part of the host the OS does not let it read is left out of every sample.
    pub fn new() -> Self {
        let system = System::new()
            .map_err(|e| tracing::warn!(error = %e, "host metrics: no system information"))
            .ok();
        let components = Components::new_with_refreshed_list()
            .map_err(|e| tracing::debug!(error = %e, "host metrics: no sensors"))
            .ok();
        let pid = sysinfo::get_current_pid().ok();
        let registry = Registry::new();
        let gauges = Gauges {
            cpu_usage: gauge_vec(
                &registry,
                "apexsim_host_cpu_usage_ratio",
                "Use of each core since the previous scrape (0 to 1).",
                &["cpu"],
            ),
            cpu_frequency: gauge_vec(
                &registry,
                "apexsim_host_cpu_frequency_hertz",
                "Current frequency of each core.",
                &["cpu"],
            ),
            load: gauge_vec(
                &registry,
                "apexsim_host_load_average",
                "Load average over the window (1m, 5m, 15m).",
                &["window"],
            ),
            memory: gauge_vec(
                &registry,
                "apexsim_host_memory_bytes",
                "Physical memory: total, used, available.",
                &["kind"],
            ),
            temperature: gauge_vec(
                &registry,
                "apexsim_host_temperature_celsius",
                "Temperature of each sensor that reports one.",
                &["sensor"],
            ),
            process: gauge_vec(
                &registry,
                "apexsim_host_process",
                "This process: cpu_ratio (of one core, since the previous scrape), memory_bytes.",
                &["kind"],
            ),
        };
        Self {
            system,
            components,
            pid,
            registry,
            gauges,
        }
    }

    /// Reads the host now.
    pub fn sample(&mut self) -> HostSample {
        let at = jiff::Timestamp::now().as_second();
        let mut cpus = Vec::new();
        let mut memory = MemorySample {
            total_bytes: 0,
            used_bytes: 0,
            available_bytes: 0,
        };
        let mut process = None;
        if let Some(system) = self.system.as_mut() {
            system.refresh_cpu_all();
            system.refresh_memory();
            cpus = system
                .cpus()
                .iter()
                .map(|c| CpuSample {
                    name: c.name().to_owned(),
                    usage_percent: c.usage().clamp(0.0, 100.0),
                    frequency_mhz: Some(c.frequency()).filter(|f| *f > 0),
                })
                .collect();
            memory = MemorySample {
                total_bytes: system.total_memory(),
                used_bytes: system.used_memory(),
                available_bytes: system.available_memory(),
            };
            if let Some(pid) = self.pid {
                system.refresh_processes(ProcessesToUpdate::Some(&[pid]), false);
                process = system.process(pid).map(|p| ProcessSample {
                    cpu_percent: p.cpu_usage().max(0.0),
                    memory_bytes: p.memory(),
                });
            }
        }
        let mut temperatures = Vec::new();
        if let Some(components) = self.components.as_mut() {
            components.refresh(true);
            temperatures = components
                .iter()
                .filter_map(|c| {
                    let celsius = c.temperature().filter(|t| t.is_finite())?;
                    Some(Temperature {
                        sensor: c.label().to_owned(),
                        celsius,
                    })
                })
                .collect();
        }
        let load_average = System::load_average().ok().map(|l| LoadAverage {
            one: l.one,
            five: l.five,
            fifteen: l.fifteen,
        });
        HostSample {
            at,
            cpus,
            load_average,
            memory,
            temperatures,
            process,
        }
    }

    /// Reads the host and writes it as Prometheus gauges (text format); what the sample lacks
    /// has no series.
    pub fn render(&mut self) -> String {
        let s = self.sample();
        let g = &self.gauges;
        for v in [
            &g.cpu_usage,
            &g.cpu_frequency,
            &g.load,
            &g.memory,
            &g.temperature,
            &g.process,
        ] {
            v.reset();
        }
        for c in &s.cpus {
            g.cpu_usage
                .with_label_values(&[c.name.as_str()])
                .set(f64::from(c.usage_percent) / 100.0);
            if let Some(mhz) = c.frequency_mhz {
                g.cpu_frequency
                    .with_label_values(&[c.name.as_str()])
                    .set(mhz as f64 * 1e6);
            }
        }
        if let Some(l) = &s.load_average {
            for (window, v) in [("1m", l.one), ("5m", l.five), ("15m", l.fifteen)] {
                g.load.with_label_values(&[window]).set(v);
            }
        }
        if s.memory.total_bytes > 0 {
            for (kind, v) in [
                ("total", s.memory.total_bytes),
                ("used", s.memory.used_bytes),
                ("available", s.memory.available_bytes),
            ] {
                g.memory.with_label_values(&[kind]).set(v as f64);
            }
        }
        for t in &s.temperatures {
            g.temperature
                .with_label_values(&[t.sensor.as_str()])
                .set(f64::from(t.celsius));
        }
        if let Some(p) = &s.process {
            g.process
                .with_label_values(&["cpu_ratio"])
                .set(f64::from(p.cpu_percent) / 100.0);
            g.process
                .with_label_values(&["memory_bytes"])
                .set(p.memory_bytes as f64);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reads_this_machine_and_leaves_out_what_it_lacks() {
        let mut m = HostMonitor::new();
        let s = m.sample();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(s.cpus.len(), cores);
        assert!(s.memory.total_bytes > 0 && s.memory.used_bytes <= s.memory.total_bytes);
        assert!(s.process.as_ref().is_some_and(|p| p.memory_bytes > 0));
        let json = serde_json::to_value(&s).expect("json");
        if s.temperatures.is_empty() {
            assert!(
                json.get("temperatures").is_none(),
                "absent, not empty: {json}"
            );
        }
        let text = m.render();
        assert!(
            text.contains("apexsim_host_memory_bytes{kind=\"total\"}"),
            "{text}"
        );
        assert_eq!(
            text.contains("apexsim_host_temperature_celsius{"),
            !m.sample().temperatures.is_empty()
        );
        // An old message without the optional fields still parses.
        let old: HostSample = serde_json::from_str(
            r#"{"at": 1, "cpus": [{"name": "cpu0", "usage_percent": 3.5}],
                "memory": {"total_bytes": 10, "used_bytes": 5, "available_bytes": 5}}"#,
        )
        .expect("parses");
        assert!(old.temperatures.is_empty() && old.load_average.is_none());
    }
}
