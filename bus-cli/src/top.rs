//! `shmbus top`: the bus live, refreshed every interval (ratatui on
//! crossterm). Per subsystem: depth, messages in and out per second,
//! latency percentiles over the last interval, subscribers, redeliveries
//! and failures per second; per client: pid, name, slots held, rates; the
//! pool by state and its turnover. Keys: `q` quits, `c` shows or hides the
//! clients, `s` (or ←/→) picks the column to sort by, `r` reverses it.
//! `--once` prints one frame as plain text.

use bus_client::protocol::{ClientStatus, Status, SubsystemStatus};
use bus_client::Bus;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Row, Table};
use std::time::{Duration, Instant};

/// One look at the bus.
struct Sample {
    at: Instant,
    status: Status,
}

/// What the screen shows, from two samples.
struct View {
    title: String,
    pool: String,
    subsystems: Vec<[String; 9]>,
    /// Sort keys of `subsystems` (numbers where the column is one).
    sub_keys: Vec<[f64; 9]>,
    clients: Vec<[String; 6]>,
}

const SUB_HEADERS: [&str; 9] = ["SUBSYSTEM", "DEPTH", "IN/S", "OUT/S", "P50", "P99", "MAX", "SUBS", "REDELIV/S FAIL/S"];
const CLIENT_HEADERS: [&str; 6] = ["PID", "NAME", "SLOTS", "SENT/S", "RECV/S", "SUBSCRIPTIONS"];

/// The per-second rate of a counter between two samples.
fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs.max(1e-3)
}

fn fmt_rate(r: f64) -> String {
    match r {
        r if r >= 1e6 => format!("{:.1}M", r / 1e6),
        r if r >= 1e4 => format!("{:.0}k", r / 1e3),
        r if r >= 1e3 => format!("{:.1}k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn view(prev: &Sample, cur: &Sample) -> View {
    let secs = cur.at.duration_since(prev.at).as_secs_f64();
    let s = &cur.status;
    let find = |name: &str| prev.status.subsystems.iter().find(|x| x.name == name);
    let mut subsystems = Vec::new();
    let mut sub_keys = Vec::new();
    let mut turnover = 0.0;
    for x in &s.subsystems {
        let empty = SubsystemStatus { name: String::new(), ..x.clone() };
        let p = find(&x.name).unwrap_or(&empty);
        let h = x.latency.histogram().since(&p.latency.histogram());
        let total = h.total();
        let (p50, p99, max) = (h.quantile(0.5), h.quantile(0.99), h.max_ns);
        let in_s = rate(x.sent, if p.name.is_empty() { x.sent } else { p.sent }, secs);
        let out_s = rate(x.delivered, if p.name.is_empty() { x.delivered } else { p.delivered }, secs);
        let red_s = rate(x.redelivered, p.redelivered, secs);
        let fail_s = rate(x.failures.total(), p.failures.total(), secs);
        // A message takes one slot whatever its groups: turnover counts
        // messages sent.
        turnover += in_s;
        subsystems.push([
            x.name.clone(),
            x.queue_depth.to_string(),
            fmt_rate(in_s),
            fmt_rate(out_s),
            crate::cli::fmt_ns(total, p50),
            crate::cli::fmt_ns(total, p99),
            crate::cli::fmt_ns(total, max),
            x.subscribers.to_string(),
            format!("{} {}", fmt_rate(red_s), if s.statistics { fmt_rate(fail_s) } else { "-".into() }),
        ]);
        sub_keys.push([
            0.0,
            x.queue_depth as f64,
            in_s,
            out_s,
            p50 as f64,
            p99 as f64,
            max as f64,
            x.subscribers as f64,
            red_s + fail_s,
        ]);
    }
    // Counts nobody keeps (statistics off) are shown as `-`, not as 0/s.
    let kept = |r: f64| if s.statistics { fmt_rate(r) } else { "-".into() };
    let before = |c: &ClientStatus| prev.status.client_list.iter().find(|o| o.id == c.id && o.pid == c.pid);
    let clients = s
        .client_list
        .iter()
        .map(|c| {
            let (ps, pr) = before(c).map_or((c.sent, c.received), |o| (o.sent, o.received));
            [
                c.pid.to_string(),
                c.name.clone(),
                c.slots.to_string(),
                kept(rate(c.sent, ps, secs)),
                kept(rate(c.received, pr, secs)),
                c.subscriptions.join(","),
            ]
        })
        .collect();
    let k = &s.slots;
    View {
        title: format!(
            "shmbus top — bus {} (daemon pid {}), {} clients{}",
            s.bus,
            s.daemon_pid,
            s.clients,
            if s.statistics { "" } else { "; statistics off" }
        ),
        pool: format!(
            "slots {}: {} free, {} cached, {} loaned, {} queued, {} held; turnover {}/s",
            k.total,
            k.free,
            k.cached,
            k.loaned,
            k.queued,
            k.held,
            fmt_rate(turnover)
        ),
        subsystems,
        sub_keys,
        clients,
    }
}

/// What the keys changed.
struct Controls {
    /// Every client gets a row (`--once`), instead of a third of the
    /// screen at most.
    all_clients: bool,
    show_clients: bool,
    sort: usize,
    reverse: bool,
    /// A printed snapshot (`--once`): no key help.
    snapshot: bool,
}

/// Which subsystem columns fit `width` (most important first; the name
/// always).
fn columns_for(width: u16) -> Vec<usize> {
    let widths = [16u16, 7, 8, 8, 8, 8, 8, 5, 16];
    let order = [0usize, 1, 2, 3, 5, 4, 7, 6, 8];
    let mut used = 0u16;
    let mut keep = Vec::new();
    for &c in &order {
        if used + widths[c] < width || c == 0 {
            used += widths[c] + 1;
            keep.push(c);
        }
    }
    keep.sort_unstable();
    keep
}

/// Draws `v` into `area` of `buf`.
fn draw(v: &View, c: &Controls, area: Rect, buf: &mut Buffer) {
    use ratatui::widgets::Widget;
    if area.width < 30 || area.height < 6 {
        Paragraph::new("too small: shmbus top needs 30×6")
            .wrap(ratatui::widgets::Wrap { trim: true })
            .render(area, buf);
        return;
    }
    let clients_h = match (c.show_clients, c.all_clients) {
        (false, _) => 0,
        (true, true) => v.clients.len() as u16 + 1,
        (true, false) => (v.clients.len() as u16 + 2).min(area.height / 3).max(3),
    };
    let [head, subs, clients, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(clients_h),
        Constraint::Length(1),
    ])
    .areas(area);
    Paragraph::new(vec![
        Line::styled(v.title.clone(), Style::new().add_modifier(Modifier::BOLD)),
        Line::raw(v.pool.clone()),
    ])
    .render(head, buf);

    let cols = columns_for(area.width);
    let mut order: Vec<usize> = (0..v.subsystems.len()).collect();
    order.sort_by(|&a, &b| {
        let o = if c.sort == 0 {
            v.subsystems[a][0].cmp(&v.subsystems[b][0])
        } else {
            v.sub_keys[b][c.sort].total_cmp(&v.sub_keys[a][c.sort])
        };
        if c.reverse {
            o.reverse()
        } else {
            o
        }
    });
    let header = Row::new(cols.iter().map(|&i| {
        let mark = if i == c.sort {
            if c.reverse {
                "▲"
            } else {
                "▼"
            }
        } else {
            ""
        };
        format!("{}{mark}", SUB_HEADERS[i])
    }))
    .style(Style::new().add_modifier(Modifier::REVERSED));
    let rows = order.iter().map(|&r| Row::new(cols.iter().map(|&i| v.subsystems[r][i].clone())));
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|&i| if i == 0 { Constraint::Min(12) } else { Constraint::Length(if i == 8 { 16 } else { 8 }) })
        .collect();
    Table::new(rows, widths).header(header).render(subs, buf);

    if c.show_clients {
        let header =
            Row::new(CLIENT_HEADERS.iter().map(|h| h.to_string())).style(Style::new().add_modifier(Modifier::REVERSED));
        let rows = v.clients.iter().map(|r| Row::new(r.iter().cloned()));
        let widths = [
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Min(10),
        ];
        Table::new(rows, widths).header(header).render(clients, buf);
    }
    if !c.snapshot {
        Paragraph::new("q quit  c clients  s/←/→ sort column  r reverse").render(foot, buf);
    }
}

fn sample(bus: &Bus) -> Result<Sample, Box<dyn std::error::Error>> {
    Ok(Sample { status: bus.status()?, at: Instant::now() })
}

/// `shmbus top [--once] [--interval D]`.
pub fn run(bus: &Bus, interval: Duration, once: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut prev = sample(bus)?;
    if once {
        std::thread::sleep(interval);
        let cur = sample(bus)?;
        let v = view(&prev, &cur);
        // A fixed width, whatever terminal the script runs in: every
        // column, and every row.
        let width = 140;
        let height = (2 + v.subsystems.len() + 1 + v.clients.len() + 1 + 1) as u16;
        let area = Rect::new(0, 0, width, height.max(6));
        let mut buf = Buffer::empty(area);
        let all = Controls { all_clients: true, show_clients: true, sort: 0, reverse: false, snapshot: true };
        draw(&v, &all, area, &mut buf);
        let mut out = String::new();
        for y in 0..area.height {
            let line: String = (0..area.width).map(|x| buf[(x, y)].symbol()).collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        print!("{out}");
        return Ok(());
    }
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return Err("shmbus top draws on a terminal, and its output is not one: in a script or a pipe, \
                    use `shmbus top --once` for a snapshot (or `shmbus status`)"
            .into());
    }
    let mut terminal = ratatui::try_init().map_err(|e| {
        ratatui::restore(); // whatever part of the set-up was done
        format!("cannot take over the terminal: {e}")
    })?;
    let result = live(bus, interval, &mut terminal, &mut prev);
    ratatui::restore();
    result
}

fn live(
    bus: &Bus,
    interval: Duration,
    terminal: &mut ratatui::DefaultTerminal,
    prev: &mut Sample,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut controls = Controls { all_clients: false, show_clients: true, sort: 0, reverse: false, snapshot: false };
    // The first frame comes after a short look, not a whole interval.
    std::thread::sleep(Duration::from_millis(200).min(interval));
    let mut cur = sample(bus).map_err(|e| format!("the daemon went away: {e}"))?;
    let mut next = Instant::now() + interval;
    loop {
        let v = view(prev, &cur);
        terminal.draw(|f| draw(&v, &controls, f.area(), f.buffer_mut()))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl = k.modifiers.contains(ratatui::crossterm::event::KeyModifiers::CONTROL);
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') | KeyCode::Char('d') if ctrl => return Ok(()),
                    KeyCode::Char('c') => controls.show_clients = !controls.show_clients,
                    KeyCode::Char('s') | KeyCode::Right => controls.sort = (controls.sort + 1) % SUB_HEADERS.len(),
                    KeyCode::Left => controls.sort = (controls.sort + SUB_HEADERS.len() - 1) % SUB_HEADERS.len(),
                    KeyCode::Char('r') => controls.reverse = !controls.reverse,
                    _ => {}
                }
            }
            continue;
        }
        next = Instant::now() + interval;
        *prev = std::mem::replace(&mut cur, sample(bus).map_err(|e| format!("the daemon went away: {e}"))?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_terminals_keep_the_most_useful_columns() {
        assert_eq!(columns_for(200), (0..9).collect::<Vec<_>>());
        let narrow = columns_for(60);
        assert!(narrow.contains(&0) && narrow.contains(&1) && narrow.contains(&2));
        assert!(!narrow.contains(&8));
        assert_eq!(columns_for(10), vec![0]);
    }
}
