use super::*;

fn signals(now: u64, rate: f64, replicas: u32) -> Signals {
    Signals {
        now,
        utc_offset: 0,
        rate,
        replicas,
        ready: replicas,
        capacity: 100.0,
    }
}

#[test]
fn hpa_formula_and_tolerance() {
    let hpa = Hpa::new(0.5, 1, 100);
    // The HPA docs' example: 200m used against a 100m target doubles.
    assert_eq!(hpa.recommend(1, 1, 1.0), 2);
    assert_eq!(
        hpa.recommend(10, 10, 0.54),
        10,
        "within 0.1 of the target ratio"
    );
    assert_eq!(hpa.recommend(10, 10, 0.56), 12, "ratio 1.12: ceil(11.2)");
    assert_eq!(hpa.recommend(10, 10, 0.25), 5);
    assert_eq!(hpa.recommend(3, 3, 0.51), 3);
}

#[test]
fn hpa_counts_starting_pods_as_idle_when_scaling_up_and_leaves_them_out_when_scaling_down() {
    let hpa = Hpa::new(0.5, 1, 100);
    // 10 ready at 100% (ratio 2) and 10 starting: the starting ones at 0
    // usage make the ratio 1.0, within tolerance: no change (all replicas
    // multiplied by the ready ones' ratio would ask for 40).
    assert_eq!(hpa.recommend(20, 10, 1.0), 20);
    // 10 ready at 150% (ratio 3), 5 starting: 30 / 15 = ratio 2 over 15 pods.
    assert_eq!(hpa.recommend(15, 10, 1.5), 30);
    // Scaling up only what the ready pods need: 10 ready at ratio 1.3,
    // 2 starting: 13 / 12 = 1.083, within tolerance: keep 12.
    assert_eq!(hpa.recommend(12, 10, 0.65), 12);
    // Scaling down: starting pods left out; 10 ready at ratio 0.5 -> 5.
    assert_eq!(hpa.recommend(14, 10, 0.25), 5);
    // Nothing ready, no metric: no change.
    assert_eq!(hpa.recommend(6, 0, 0.0), 6);
}

#[test]
fn hpa_scale_up_is_limited_to_max_of_double_or_four_per_15s() {
    let mut hpa = Hpa::new(0.5, 1, 1_000);
    assert_eq!(hpa.behave(0, 2, 100), 6, "2 + 4 beats 2 x 2");
    assert_eq!(hpa.behave(15, 6, 100), 12, "then doubling");
    assert_eq!(hpa.behave(30, 12, 100), 24);
    // Within one 15 s period the limit counts from the period's start.
    let mut hpa = Hpa::new(0.5, 1, 1_000);
    assert_eq!(hpa.behave(0, 10, 100), 20);
    assert_eq!(hpa.behave(5, 20, 100), 20, "same period: still 2 x 10");
}

#[test]
fn hpa_scale_down_waits_out_the_stabilisation_window() {
    let mut hpa = Hpa::new(0.5, 1, 100);
    assert_eq!(hpa.behave(0, 10, 10), 10);
    assert_eq!(hpa.behave(60, 10, 4), 10, "the window still holds 10");
    assert_eq!(hpa.behave(299, 10, 4), 10);
    assert_eq!(hpa.behave(301, 10, 4), 4, "10 has left the window");
    // The highest recommendation of the window wins, not the last.
    let mut hpa = Hpa::new(0.5, 1, 100);
    hpa.behave(0, 10, 8);
    hpa.behave(100, 10, 3);
    assert_eq!(hpa.behave(200, 10, 2), 8);
    assert_eq!(hpa.behave(301, 10, 2), 3);
}

#[test]
fn hpa_respects_min_and_max() {
    let mut hpa = Hpa::new(0.5, 2, 5);
    assert_eq!(hpa.behave(0, 5, 50), 5);
    assert_eq!(hpa.behave(1_000, 5, 0), 2);
}

#[test]
fn spike_fires_on_a_real_rise_and_not_on_noise() {
    // 40% in 2 minutes at 10,000 requests/s: a spike.
    let mut spike = Spike::new(0.7);
    let mut fired = None;
    for t in (0..=600u64).step_by(15) {
        // Flat, then up 40% over two minutes from t = 300.
        let ramp = (t.saturating_sub(300) as f64 / 120.0).min(1.0);
        let rate = 10_000.0 * (1.0 + 0.4 * ramp);
        if let Some(p) = spike.propose(&signals(t, rate, 143)) {
            fired.get_or_insert((t, p));
        }
    }
    let (t, p) = fired.expect("a 40% rise fires");
    assert!(
        (300..=450).contains(&t),
        "fired at {t}: by 30 s after the rise is complete"
    );
    assert!(p.replicas > 143, "{p:?}");

    // Poisson noise at 2 requests/s: ±sqrt(2 * 15) per 15 s count, far
    // more than 30% of the rate, and never a spike.
    let mut spike = Spike::new(0.7);
    let mut state = 12_345u64;
    for t in (0..86_400u64).step_by(15) {
        // A Poisson(30) count per 15 s by summing Bernoulli draws.
        let mut count = 0;
        for _ in 0..300 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state % 10 == 0 {
                count += 1;
            }
        }
        let rate = f64::from(count) / 15.0;
        assert!(
            spike.propose(&signals(t, rate, 1)).is_none(),
            "fired on noise at {t}: {rate}"
        );
    }
}

#[test]
fn scheduled_thresholds_follow_the_local_hour() {
    let mut s = Scheduled::new((9, 18), 1, 100);
    // 70% at 10:00 local (UTC-4: 14:00 UTC) is inside the peak band.
    let mut sig = signals(14 * 3_600, 7_000.0, 100);
    sig.utc_offset = -4 * 3_600;
    assert_eq!(s.propose(&sig).unwrap().replicas, 100);
    // The same 70% at 22:00 local is above the off-peak band's 60%.
    let mut s = Scheduled::new((9, 18), 1, 200);
    let mut sig = signals(26 * 3_600, 7_000.0, 100);
    sig.utc_offset = -4 * 3_600;
    assert_eq!(s.propose(&sig).unwrap().replicas, 140, "sized for 50%");
}

/// 100 requests/s, 1,000 from 12:00 to 13:00 every day.
fn daily_peak(t: u64) -> f64 {
    if (43_200..46_800).contains(&(t % 86_400)) {
        1_000.0
    } else {
        100.0
    }
}

#[test]
fn forecast_abstains_without_history_and_follows_the_season() {
    for model in [ForecastModel::Mstl, ForecastModel::SeasonalNaive] {
        // Twenty hours: too little for either model (MSTL wants two
        // days, seasonal-naive one).
        let mut f = Forecast::with_model(900, 0.5, model);
        for t in (0..72_000).step_by(15) {
            assert!(f.propose(&signals(t, 100.0, 2)).is_none(), "{model:?}");
        }
    }
    // Three days of the daily cycle, then 11:50 on day four: the noon
    // peak is inside the 15-minute horizon.
    for model in [ForecastModel::Mstl, ForecastModel::SeasonalNaive] {
        let mut f = Forecast::with_model(900, 0.5, model);
        let mut last = None;
        for t in (0..3 * 86_400 + 42_600).step_by(15) {
            last = f.propose(&signals(t, daily_peak(t), 2));
        }
        let p = last.take().expect("three days of history");
        // 1,000 / (100 x 0.5) = 20.
        assert!((19..=21).contains(&p.replicas), "{model:?}: {p:?}");
        // And at 15:00 it sees only the base rate ahead.
        for t in (3 * 86_400 + 42_600..3 * 86_400 + 54_000).step_by(15) {
            last = f.propose(&signals(t, daily_peak(t), 2));
        }
        let p = last.expect("a forecast");
        assert!((1..=3).contains(&p.replicas), "{model:?}: {p:?}");
    }
}

#[test]
fn forecast_resumes_from_stored_history() {
    let mut f = Forecast::new(900, 0.5);
    for t in (0..3 * 86_400).step_by(15) {
        f.propose(&signals(t, daily_peak(t), 2));
    }
    let mut g = Forecast::new(900, 0.5);
    g.preload(f.history().unwrap().to_vec());
    let p = g.propose(&signals(3 * 86_400 + 42_600, 100.0, 2)).unwrap();
    assert!((19..=21).contains(&p.replicas), "{p:?}");
}

#[test]
fn layered_takes_the_highest_and_scales_in_only_reactively() {
    struct Fixed(u32);
    impl Policy for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn propose(&mut self, _: &Signals) -> Option<Proposal> {
            Some(Proposal {
                replicas: self.0,
                layer: "fixed",
                reason: String::new(),
            })
        }
    }
    let mut l = Layered {
        layers: vec![Box::new(Fixed(5)), Box::new(Fixed(8)), Box::new(Fixed(2))],
        min: 1,
        max: 7,
    };
    let p = l.propose(&signals(0, 0.0, 6)).unwrap();
    assert_eq!(p.replicas, 7, "the highest, within max");
    let mut l = Layered {
        layers: vec![Box::new(Fixed(3)), Box::new(Fixed(2))],
        min: 1,
        max: 10,
    };
    assert_eq!(l.propose(&signals(0, 0.0, 6)).unwrap().replicas, 3);
}
