"""The reward-hacking alarm on constructed series."""

from rlhf_dist.driver.hacking_alarm import HackingMonitor


def feed(monitor, proxies, golds, kls=None):
    kls = kls or [0.0] * len(proxies)
    return [monitor.update(p, g, k) for p, g, k in zip(proxies, golds, kls)]


def test_fires_when_proxy_rises_and_gold_falls():
    alarms = feed(HackingMonitor(window=5), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.3, 0.28, 0.25, 0.2, 0.15, 0.1])
    assert [a.raised for a in alarms] == [False, False, False, False, True, True]
    assert "gold reward fell" in alarms[-1].reason


def test_quiet_when_both_rise_or_gold_is_flat_noise():
    assert not any(a.raised for a in feed(HackingMonitor(5), [0.1 * i for i in range(10)], [0.05 * i for i in range(10)]))
    noisy_flat = [0.30, 0.31, 0.29, 0.30, 0.305, 0.295, 0.30]
    assert not any(a.raised for a in feed(HackingMonitor(5), [0.1 * i for i in range(7)], noisy_flat))


def test_kl_budget_and_no_gold():
    monitor = HackingMonitor(window=5, kl_budget=10.0)
    assert not monitor.update(1.0, None, 5.0).raised
    alarm = monitor.update(1.0, None, 12.0)
    assert alarm.raised and "exceeds the budget 10" in alarm.reason
