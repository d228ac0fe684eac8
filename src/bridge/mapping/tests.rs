//! Table tests for route compilation and name rewriting.

use super::names::filter_matches;
use super::report::{bayeux_segs, mqtt_segs, overlap};
use super::*;

fn config(bayeux: &str, mqtt: &str, direction: Direction) -> RouteConfig {
    RouteConfig {
        name: None,
        bayeux: bayeux.to_owned(),
        mqtt: mqtt.to_owned(),
        direction,
        qos: 1,
        retain: false,
        payload: PayloadMode::Data,
        properties: None,
        ext_properties: false,
        dead_letter_topic: None,
    }
}

fn both(bayeux: &str, mqtt: &str) -> Route {
    compile(&[config(bayeux, mqtt, Direction::Both)])
        .unwrap_or_else(|e| panic!("{bayeux} ↔ {mqtt}: {e}"))
        .remove(0)
}

fn refusal(bayeux: &str, mqtt: &str, direction: Direction) -> MappingError {
    match compile(&[config(bayeux, mqtt, direction)]) {
        Ok(_) => panic!("{bayeux} ↔ {mqtt} compiled"),
        Err(e) => e,
    }
}

#[test]
fn names_are_rewritten_both_ways_by_corresponding_wildcards() {
    // (bayeux, mqtt, channel, topic, mqtt filter subscribed to)
    let table = [
        ("/a/b", "x/y", "/a/b", "x/y", "x/y"),
        ("/a/b/c", "x", "/a/b/c", "x", "x"),
        (
            "/sensors/*",
            "sensors/+",
            "/sensors/kitchen",
            "sensors/kitchen",
            "sensors/+",
        ),
        (
            "/sensors/**",
            "sensors/#",
            "/sensors/a/b",
            "sensors/a/b",
            "sensors/#",
        ),
        (
            "/sensors/**",
            "sensors/#",
            "/sensors/a",
            "sensors/a",
            "sensors/#",
        ),
        (
            "/sf/events/**",
            "salesforce/#",
            "/sf/events/Order__e",
            "salesforce/Order__e",
            "salesforce/#",
        ),
        ("/a/*", "x/y/z/+", "/a/q", "x/y/z/q", "x/y/z/+"),
        ("/a/**", "#", "/a/b/c", "b/c", "#"),
        ("/**", "#", "/a/b", "a/b", "#"),
        ("/*", "+", "/a", "a", "+"),
        ("/*", "x/+", "/a", "x/a", "x/+"),
        (
            "/sensors/*",
            "sensors/{1}/temp",
            "/sensors/k",
            "sensors/k/temp",
            "sensors/+/temp",
        ),
        ("/sensors/*", "{1}/temp", "/sensors/k", "k/temp", "+/temp"),
        ("/sensors/**", "x/{1}", "/sensors/a/b", "x/a/b", "x/#"),
        ("/a/*", "x/*/+", "/a/b", "x/*/b", "x/*/+"),
        ("/a b/*", "x y/+", "/a b/c d", "x y/c d", "x y/+"),
    ];
    for (bayeux, mqtt, channel, topic, filter) in table {
        let route = both(bayeux, mqtt);
        let case = format!("{bayeux} ↔ {mqtt}");
        assert_eq!(route.mqtt_filter, filter, "{case}");
        assert!(route.matches_channel(channel), "{case}: {channel}");
        assert!(route.matches_topic(topic), "{case}: {topic}");
        assert_eq!(
            route.channel_to_topic(channel).ok().as_deref(),
            Some(topic),
            "{case}"
        );
        assert_eq!(
            route.topic_to_channel(topic).ok().as_deref(),
            Some(channel),
            "{case}"
        );
    }
}

#[test]
fn channels_without_a_topic_do_not_translate() {
    // (bayeux, mqtt, channel)
    let table = [
        ("/sensors/*", "sensors/+", "/sensors/a/b"),
        ("/sensors/*", "sensors/+", "/sensors"),
        ("/sensors/*", "sensors/+", "/other/a"),
        ("/sensors/**", "sensors/#", "/sensors"),
        ("/a/b", "x", "/a/b/c"),
        ("/a/*", "x/+", "/a/b+c"),
        ("/a/*", "x/+", "/a/b#"),
        ("/a/**", "x/#", "/a/b/#"),
        ("/*", "+", "/$SYS"),
        ("/**", "#", "/$share/g/t"),
        ("/a/*", "x/+", "not-a-channel"),
    ];
    for (bayeux, mqtt, channel) in table {
        let route = both(bayeux, mqtt);
        assert_eq!(
            route.channel_to_topic(channel).ok(),
            None,
            "{bayeux} ↔ {mqtt}: {channel}"
        );
    }
}

#[test]
fn topics_without_a_channel_do_not_translate() {
    // (bayeux, mqtt, topic)
    let table = [
        // `#` matches its parent level; `**` needs one more segment.
        ("/sensors/**", "sensors/#", "sensors"),
        ("/sensors/*", "sensors/+", "sensors/"),
        ("/sensors/*", "sensors/+", "sensors/a/b"),
        ("/sensors/*", "sensors/+", "other/a"),
        ("/a/**", "x/#", "x//b"),
        ("/a/**", "x/#", "x/b/"),
        ("/a/*", "x/+", "x/*"),
        ("/a/*", "x/+", "x/**"),
        ("/a/*", "x/+", "x/b*"),
        ("/a/*", "x/+", "x/a\u{1}b"),
        ("/**", "#", "meta/connect"),
        ("/**", "#", "$SYS/broker/load"),
        ("/sensors/*", "sensors/{1}/temp", "sensors/k/humidity"),
        ("/sensors/*", "sensors/{1}/temp", "sensors/k"),
        ("/a/b", "x/y", "x/y/z"),
    ];
    for (bayeux, mqtt, topic) in table {
        let route = both(bayeux, mqtt);
        assert_eq!(
            route.topic_to_channel(topic).ok(),
            None,
            "{bayeux} ↔ {mqtt}: {topic:?}"
        );
    }
}

#[test]
fn untranslatable_routes_are_refused_naming_the_key() {
    use Direction::{BayeuxToMqtt as B2M, Both, MqttToBayeux as M2B};
    // (bayeux, mqtt, direction, key, part of the reason)
    let table = [
        (
            "/a/b",
            "x/+",
            Both,
            "mqtt",
            "has a wildcard but the Bayeux channel /a/b has none",
        ),
        (
            "/a/b",
            "x/#",
            B2M,
            "mqtt",
            "has a wildcard but the Bayeux channel",
        ),
        (
            "/a/*",
            "x/y",
            Both,
            "mqtt",
            "has no wildcard but the Bayeux pattern /a/* has one",
        ),
        ("/a/**", "x", M2B, "mqtt", "add `#` as the last level"),
        ("/a/*", "x/#", Both, "mqtt", "corresponds to `+`, not `#`"),
        ("/a/**", "x/+", Both, "mqtt", "corresponds to `#`, not `+`"),
        (
            "/a/**",
            "x/+/y",
            Both,
            "mqtt",
            "corresponds to `#`, not `+`",
        ),
        ("/a/*", "x/+/+", Both, "mqtt", "has 2 wildcards"),
        ("/a/**", "+/x/#", Both, "mqtt", "has 2 wildcards"),
        (
            "/sensors/temp/*",
            "sensors/+/temp",
            Both,
            "mqtt",
            "followed by more levels",
        ),
        (
            "/sensors/*",
            "sensors/+/temp",
            B2M,
            "mqtt",
            "write `{1}` at that level",
        ),
        ("/meta/**", "m/#", B2M, "bayeux", "is a /meta/ channel"),
        ("/meta/connect", "m", M2B, "bayeux", "is a /meta/ channel"),
        (
            "/service/echo",
            "s",
            Both,
            "bayeux",
            "is a /service/ channel",
        ),
        (
            "/service/**",
            "s/#",
            B2M,
            "bayeux",
            "is a /service/ channel",
        ),
        (
            "/a/*/b",
            "x/+",
            Both,
            "bayeux",
            "\"/a/*/b\" is not a valid channel",
        ),
        ("a/b", "x", Both, "bayeux", "must start with '/'"),
        ("/a//b", "x", Both, "bayeux", "empty segment"),
        ("/a/*", "$SYS/+", Both, "mqtt", "starts with '$'"),
        ("/a", "$x", M2B, "mqtt", "starts with '$'"),
        ("/a/**", "x/#/y", Both, "mqtt", "'#' must be the last level"),
        ("/a/*", "x/a+", Both, "mqtt", "must be whole levels"),
        ("/a/**", "x#", Both, "mqtt", "must be whole levels"),
        ("/a/*", "", Both, "mqtt", "must not be empty"),
        ("/a/*", "x/\0/+", Both, "mqtt", "NUL"),
        ("/a/*", "x/{2}", Both, "mqtt", "only `{1}` exists"),
        ("/a/*", "{1}/x/{1}", Both, "mqtt", "may appear only once"),
        ("/a/b", "x/{1}", Both, "mqtt", "but /a/b has none"),
        (
            "/a/**",
            "x/{1}/y",
            Both,
            "mqtt",
            "`{1}` must be the last level",
        ),
        ("/a/*", "x/{1}/+", Both, "mqtt", "mixes `{1}` with `+`/`#`"),
    ];
    for (bayeux, mqtt, direction, key, reason) in table {
        let err = refusal(bayeux, mqtt, direction);
        assert_eq!(err.field, key, "{bayeux} ↔ {mqtt}: {err}");
        assert!(err.reason.contains(reason), "{bayeux} ↔ {mqtt}: {err}");
    }
}

#[test]
fn errors_name_the_route_number_from_one() {
    let routes = [
        config("/a/*", "a/+", Direction::Both),
        config("/b/*", "b/+", Direction::Both),
        config("/c/*", "c/#", Direction::Both),
    ];
    let err = compile(&routes).unwrap_err();
    assert_eq!(err.route, 3);
    assert_eq!(err.key(), "route[3].mqtt");
    assert_eq!(
        err.to_string(),
        "route[3].mqtt: /c/* ends in `*` (exactly one segment), which corresponds to `+`, not `#`"
    );
    let in_file = err.in_file(Path::new("bridge.toml"));
    assert_eq!(
        in_file.to_string(),
        "bridge.toml: route[3].mqtt: /c/* ends in `*` (exactly one segment), which corresponds \
         to `+`, not `#`"
    );
}

#[test]
fn service_channels_may_be_published_to() {
    let routes = compile(&[config("/service/cmd", "cmd", Direction::MqttToBayeux)]).unwrap();
    assert_eq!(
        routes[0].topic_to_channel("cmd").ok().as_deref(),
        Some("/service/cmd")
    );
}

#[test]
fn direction_decides_the_subscriptions() {
    // (direction, subscribes bayeux, subscribes mqtt)
    let table = [
        (Direction::BayeuxToMqtt, true, false),
        (Direction::MqttToBayeux, false, true),
        (Direction::Both, true, true),
    ];
    for (direction, bayeux, mqtt) in table {
        let route = compile(&[config("/a/*", "a/+", direction)])
            .unwrap()
            .remove(0);
        assert_eq!(route.subscribes_bayeux(), bayeux, "{direction}");
        assert_eq!(route.subscribes_mqtt(), mqtt, "{direction}");
    }
}

#[test]
fn routes_keep_their_settings_and_position() {
    let mut second = config("/b", "b", Direction::BayeuxToMqtt);
    second.qos = 2;
    second.retain = true;
    second.payload = PayloadMode::Message;
    let routes = compile(&[config("/a", "a", Direction::Both), second]).unwrap();
    let route = &routes[1];
    assert_eq!((route.index, route.number()), (1, 2));
    assert_eq!(
        (route.qos, route.retain, route.payload.clone()),
        (2, true, PayloadMode::Message)
    );
    assert_eq!(route.bayeux.as_str(), "/b");
}

#[test]
fn mqtt_filters_match_by_mqtt_rules() {
    // (filter, topic, matches?)
    let table = [
        ("a/b", "a/b", true),
        ("a/b", "a/b/c", false),
        ("a/+", "a/b", true),
        ("a/+", "a/", true),
        ("a/+", "a", false),
        ("a/+", "a/b/c", false),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("a/#", "b", false),
        ("#", "a/b", true),
        ("#", "$SYS/x", false),
        ("+/x", "$SYS/x", false),
        ("+/+/c", "a/b/c", true),
        ("+/+/c", "a/b/d", false),
    ];
    for (filter, topic, expected) in table {
        assert_eq!(
            filter_matches(filter, topic),
            expected,
            "{filter} vs {topic}"
        );
    }
}

#[test]
fn subscriptions_are_deduplicated_with_the_highest_qos() {
    let mut qos2 = config("/a/*", "a/+", Direction::MqttToBayeux);
    qos2.qos = 2;
    let routes = compile(&[
        config("/a/*", "a/+", Direction::Both),
        qos2,
        config("/a/*", "z/+", Direction::BayeuxToMqtt),
        config("/b", "b", Direction::MqttToBayeux),
    ])
    .unwrap();
    let bayeux: Vec<String> = bayeux_subscriptions(&routes)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(bayeux, ["/a/*"]);
    assert_eq!(
        mqtt_subscriptions(&routes),
        [("a/+".to_owned(), 2), ("b".to_owned(), 1)]
    );
}

#[test]
fn patterns_overlap_when_some_name_matches_both() {
    let b = |s: &str| ChannelPattern::parse(s).unwrap();
    // (pattern, pattern, overlap?)
    let bayeux = [
        ("/a/**", "/a/b/*", true),
        ("/a/**", "/a/b", true),
        ("/a/**", "/a", false),
        ("/a/*", "/a/b", true),
        ("/a/*", "/b/*", false),
        ("/a/*", "/a/b/c", false),
        ("/**", "/x/y", true),
        ("/a/b", "/a/b", true),
    ];
    for (x, y, expected) in bayeux {
        let (px, py) = (b(x), b(y));
        assert_eq!(
            overlap(&bayeux_segs(&px), &bayeux_segs(&py), 1),
            expected,
            "{x} {y}"
        );
        assert_eq!(
            overlap(&bayeux_segs(&py), &bayeux_segs(&px), 1),
            expected,
            "{y} {x}"
        );
    }
    let mqtt = [
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("a/+", "a/b/c", false),
        ("+/b", "a/+", true),
        ("a/+/c", "a/b/d", false),
        ("#", "x", true),
    ];
    for (x, y, expected) in mqtt {
        assert_eq!(
            overlap(&mqtt_segs(x), &mqtt_segs(y), 0),
            expected,
            "{x} {y}"
        );
        assert_eq!(
            overlap(&mqtt_segs(y), &mqtt_segs(x), 0),
            expected,
            "{y} {x}"
        );
    }
}

#[test]
fn overlapping_routes_in_the_same_direction_are_warned_about() {
    let routes = compile(&[
        config("/sensors/**", "sensors/#", Direction::BayeuxToMqtt),
        config("/sensors/a/*", "a/+", Direction::Both),
        config("/other/*", "sensors/x/+", Direction::MqttToBayeux),
        config("/cmd/*", "cmd/+", Direction::MqttToBayeux),
    ])
    .unwrap();
    assert_eq!(
        warnings(&routes),
        [
            "route[1] (/sensors/**) and route[2] (/sensors/a/*) overlap: a Bayeux message on a \
             channel both match is forwarded to MQTT once per route",
        ]
    );
    let routes = compile(&[
        config("/x/*", "sensors/+", Direction::Both),
        config("/y/**", "sensors/#", Direction::MqttToBayeux),
    ])
    .unwrap();
    assert_eq!(
        warnings(&routes),
        [
            "route[1] (sensors/+) and route[2] (sensors/#) overlap: an MQTT message on a topic \
             both match is forwarded to Bayeux once per distinct channel",
        ]
    );
}

#[test]
fn mirrored_routes_in_opposite_directions_are_a_loop_that_echo_suppression_covers() {
    let routes = compile(&[
        config("/a/**", "a/#", Direction::BayeuxToMqtt),
        config("/a/**", "a/#", Direction::MqttToBayeux),
    ])
    .unwrap();
    let warnings = warnings(&routes);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "route[1] and route[2] feed each other across directions: /a/x → a/x (route[1]), \
             then a/x → /a/x (route[2]), which route[1] reads again. Echo suppression covers \
             it within this bridge"
        ),
        "{warnings:?}"
    );
}

#[test]
fn the_loop_lint_names_both_routes_and_a_name_that_goes_round() {
    let mut named = config("/in/**", "x/#", Direction::BayeuxToMqtt);
    named.name = Some("outbound".into());
    let routes = compile(&[
        named,
        config("/other/*", "y/+", Direction::MqttToBayeux),
        // Feeds route 1 back: x/<one level> → /in/deep/<level>, which /in/** reads.
        config("/in/deep/*", "x/+", Direction::MqttToBayeux),
    ])
    .unwrap();
    let loops = find_loops(&routes);
    assert_eq!(
        loops,
        [Loop {
            forth: 0,
            back: 2,
            channel: "/in/x".into(),
            topic: "x/x".into(),
            back_channel: "/in/deep/x".into(),
        }]
    );
    let text = warnings(&routes).join("\n");
    assert!(
        text.contains("route[1] \"outbound\" and route[3] feed each other"),
        "{text}"
    );
}

#[test]
fn a_both_route_alone_or_beside_disjoint_ones_is_not_a_loop() {
    let routes = compile(&[
        config("/a/**", "a/#", Direction::Both),
        config("/b/**", "b/#", Direction::Both),
        // Reads what route 1 publishes, but publishes where nobody reads.
        config("/c/**", "a/#", Direction::MqttToBayeux),
    ])
    .unwrap();
    assert_eq!(find_loops(&routes), []);
}

#[test]
fn two_overlapping_both_routes_are_reported_once() {
    let routes = compile(&[
        config("/a/**", "a/#", Direction::Both),
        config("/a/b/*", "a/b/+", Direction::Both),
    ])
    .unwrap();
    let loops = find_loops(&routes);
    assert_eq!(loops.len(), 1, "{loops:?}");
}

#[test]
fn ten_thousand_routes_check_without_warnings() {
    let configs: Vec<RouteConfig> = (1..=10_000)
        .map(|i| config(&format!("/r/{i}/**"), &format!("r/{i}/#"), Direction::Both))
        .collect();
    let routes = compile(&configs).unwrap();
    assert_eq!(warnings(&routes), Vec::<String>::new());
    let text = describe(&routes);
    assert!(text.starts_with("10000 routes:\n"));
    let routes = Routes::new(routes);
    let found: Vec<usize> = routes
        .mqtt_matches("r/9999/x")
        .map(|r| r.number())
        .collect();
    assert_eq!(found, [9999]);
    let found: Vec<usize> = routes
        .bayeux_matches("/r/17/a/b")
        .map(|r| r.number())
        .collect();
    assert_eq!(found, [17]);
    let explained = explain(&routes, &Query::Topic("r/10000/a".into()));
    assert_eq!(explained.applies, 1, "{}", explained.text);
}

#[test]
fn explain_lists_every_route_that_takes_a_channel_with_its_settings() {
    let mut second = config("/s/*", "one/+", Direction::Both);
    second.qos = 2;
    second.retain = true;
    second.payload = PayloadMode::Message;
    second.name = Some("sensors".into());
    let routes = compile(&[
        config("/s/**", "all/#", Direction::BayeuxToMqtt),
        second,
        config("/s/a", "back/a", Direction::MqttToBayeux),
        config("/t/**", "t/#", Direction::BayeuxToMqtt),
    ])
    .unwrap();
    let e = explain(&routes, &Query::Channel("/s/a".into()));
    assert_eq!(e.applies, 2, "{}", e.text);
    let expected = "\
Bayeux channel /s/a:

route[1]  applies: /s/a → MQTT topic all/a
  direction bayeux_to_mqtt, qos 1, retain false, payload data
  loop prevention: not needed (no route reads all/a back)

route[2] \"sensors\"  applies: /s/a → MQTT topic one/a
  direction both, qos 2, retain true, payload message
  loop prevention: applies (route[2] \"sensors\" read one/a back; the bridge's own publish is not forwarded again)

route[3]  does not apply: its direction is mqtt_to_bayeux: it publishes to /s/a but does not subscribe to it

2 routes apply.
";
    assert_eq!(e.text, expected);
}

#[test]
fn explain_says_why_a_route_nearly_matches() {
    let routes = compile(&[
        config("/s/*", "s/+", Direction::Both),
        config("/d/**", "d/#", Direction::Both),
        config("/**", "all/#", Direction::BayeuxToMqtt),
    ])
    .unwrap();
    let e = explain(&routes, &Query::Channel("/s/a/b".into()));
    assert_eq!(e.applies, 1, "{}", e.text);
    assert!(
        e.text.contains(
            "route[1]  does not apply: /s/* matches exactly one more segment, /s/a/b has 2; \
             `**` would match them all"
        ),
        "{}",
        e.text
    );
    let e = explain(&routes, &Query::Channel("/d".into()));
    assert!(
        e.text
            .contains("route[2]  does not apply: /d/** needs one more segment"),
        "{}",
        e.text
    );
    let e = explain(&routes, &Query::Channel("/service/echo".into()));
    assert_eq!(e.applies, 0, "{}", e.text);
    assert!(
        e.text.contains(
            "route[3]  does not apply: /** matches, but the server answers /service/echo itself"
        ),
        "{}",
        e.text
    );
    let e = explain(&routes, &Query::Topic("d".into()));
    assert_eq!(e.applies, 0, "{}", e.text);
    assert!(
        e.text
            .contains("d/# also matches its parent level d, but /d/** needs one more segment"),
        "{}",
        e.text
    );
    let e = explain(&routes, &Query::Topic("s/a/b".into()));
    assert!(
        e.text.contains("s/+ takes exactly one level at the `+`"),
        "{}",
        e.text
    );
    assert!(
        e.text
            .ends_with("No route applies: the bridge does not forward it.\n"),
        "{}",
        e.text
    );
    let e = explain(&routes, &Query::Topic("$SYS/d/x".into()));
    assert_eq!(e.applies, 0, "{}", e.text);
    let e = explain(&routes, &Query::Topic("$d/x".into()));
    assert!(e.text.contains("starts with `$`"), "{}", e.text);
}

#[test]
fn explain_of_a_topic_publishes_each_channel_once() {
    let routes = compile(&[
        config("/a/**", "x/#", Direction::MqttToBayeux),
        config("/a/*", "x/+", Direction::Both),
    ])
    .unwrap();
    let e = explain(&routes, &Query::Topic("x/1".into()));
    assert_eq!(e.applies, 1, "{}", e.text);
    assert!(
        e.text
            .contains("route[2]  does not apply: /a/1 is already a target of route[1]"),
        "{}",
        e.text
    );
    assert!(
        e.text
            .contains("loop prevention: applies (route[2] read /a/1 back"),
        "{}",
        e.text
    );
}

mod tries {
    use super::super::PatternTrie;
    use super::super::report::{Seg, overlap};
    use proptest::prelude::*;

    fn seg() -> impl Strategy<Value = Seg<'static>> {
        prop_oneof![
            3 => Just(Seg::Literal("a")),
            3 => Just(Seg::Literal("b")),
            2 => Just(Seg::One),
        ]
    }

    fn pattern() -> impl Strategy<Value = Vec<Seg<'static>>> {
        (prop::collection::vec(seg(), 0..4), any::<bool>()).prop_map(|(mut segs, deep)| {
            if deep || segs.is_empty() {
                segs.push(Seg::Deep);
            }
            segs
        })
    }

    proptest! {
        #[test]
        fn the_trie_finds_the_overlaps_that_comparing_every_pair_finds(
            patterns in prop::collection::vec(pattern(), 1..10),
            query in pattern(),
            deep_min in 0usize..2,
        ) {
            let mut trie = PatternTrie::new(deep_min);
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, i);
            }
            let pairwise: Vec<usize> = (0..patterns.len())
                .filter(|&i| overlap(&patterns[i], &query, deep_min))
                .collect();
            prop_assert_eq!(trie.overlapping(&query), pairwise, "{:?}", query);
        }
    }
}

#[test]
fn keys_without_effect_are_warned_about() {
    let mut route = config("/a", "/a", Direction::MqttToBayeux);
    route.retain = true;
    route.payload = PayloadMode::Message;
    let routes = compile(&[route]).unwrap();
    assert_eq!(
        warnings(&routes),
        [
            "route[1].retain has no effect: the route only forwards MQTT → Bayeux",
            "route[1].payload has no effect: the route only forwards MQTT → Bayeux",
            "route[1].mqtt \"/a\" starts with '/', so its first level is empty; MQTT topics \
             usually do not",
        ]
    );
}

#[test]
fn describe_shows_routes_examples_and_subscriptions() {
    let mut cmd = config("/devices/*", "cmd/{1}/set", Direction::MqttToBayeux);
    cmd.qos = 2;
    let routes = compile(&[
        config("/sensors/**", "sensors/#", Direction::BayeuxToMqtt),
        config("/chat/*", "chat/+", Direction::Both),
        cmd,
        config("/sf/**", "sf/#", Direction::MqttToBayeux),
    ])
    .unwrap();
    let expected = "\
4 routes:

route[1]  bayeux_to_mqtt  qos 1, retain false, payload data
  subscribe Bayeux /sensors/**, publish MQTT sensors/#
  e.g. /sensors/x → sensors/x
       /sensors/x/y → sensors/x/y

route[2]  both  qos 1, retain false, payload data
  subscribe and publish Bayeux /chat/* and MQTT chat/+
  e.g. /chat/x ↔ chat/x

route[3]  mqtt_to_bayeux  qos 2
  subscribe MQTT cmd/{1}/set (filter cmd/+/set), publish Bayeux /devices/*
  e.g. /devices/x ← cmd/x/set

route[4]  mqtt_to_bayeux  qos 1
  subscribe MQTT sf/#, publish Bayeux /sf/**
  e.g. /sf/x ← sf/x
       /sf/x/y ← sf/x/y
  not forwarded: topic sf (matches sf/# but /sf/** needs one more segment)

Bayeux subscriptions: /sensors/**, /chat/*
MQTT subscriptions: chat/+ (qos 1), cmd/+/set (qos 2), sf/# (qos 1)
";
    assert_eq!(describe(&routes), expected);
}

#[test]
fn describe_lists_warnings_last() {
    let routes = compile(&[
        config("/a/**", "a/#", Direction::BayeuxToMqtt),
        config("/a/b", "b", Direction::BayeuxToMqtt),
    ])
    .unwrap();
    let text = describe(&routes);
    assert!(text.starts_with("2 routes:\n"), "{text}");
    assert!(
        text.ends_with(
            "\nWarnings:\n  - route[1] (/a/**) and route[2] (/a/b) overlap: a Bayeux message on \
             a channel both match is forwarded to MQTT once per route\n"
        ),
        "{text}"
    );
}

#[test]
fn service_channels_are_reached_only_by_routes_that_name_them() {
    let catch_all = compile(&[config("/**", "#", Direction::MqttToBayeux)])
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    assert_eq!(catch_all.topic_to_channel("service/echo").ok(), None);
    assert_eq!(
        catch_all.topic_to_channel("a/service/echo").ok().as_deref(),
        Some("/a/service/echo")
    );
    let named = compile(&[config("/service/**", "svc/#", Direction::MqttToBayeux)])
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    assert_eq!(
        named.topic_to_channel("svc/echo").ok().as_deref(),
        Some("/service/echo")
    );
}

#[test]
fn names_the_other_side_would_refuse_are_invalid_names_never_output() {
    let route = both("/poison/**", "poison/#");
    // (channel, the generated topic that is refused)
    for (channel, topic) in [
        ("/poison/a\u{1}b", "poison/a\u{1}b"),
        ("/poison/a\u{1f}", "poison/a\u{1f}"),
        ("/poison/x/\u{7f}", "poison/x/\u{7f}"),
        ("/poison/\u{85}", "poison/\u{85}"),
        ("/poison/\u{9f}", "poison/\u{9f}"),
        ("/poison/\u{fdd0}", "poison/\u{fdd0}"),
        ("/poison/a\u{fffe}", "poison/a\u{fffe}"),
        ("/poison/a\u{10ffff}", "poison/a\u{10ffff}"),
    ] {
        let error = route.channel_to_topic(channel).unwrap_err();
        assert_eq!(error.reason(), "invalid_name", "{channel:?}: {error}");
        assert_eq!(
            error,
            Untranslatable::InvalidName {
                name: topic.to_owned(),
                reason: crate::mqtt::validate_topic(topic).unwrap_err(),
            }
        );
        // Shown escaped: the log line and the error carry no raw control character.
        assert!(
            !error.to_string().contains(|c: char| c.is_control()),
            "{error}"
        );
    }
    assert_eq!(
        route.channel_to_topic("/poison/a+b").unwrap_err().reason(),
        "unmapped"
    );
    assert_eq!(
        route.channel_to_topic("/other").unwrap_err().reason(),
        "unmapped"
    );
    // MQTT → Bayeux: what the Bayeux grammar (as CometD accepts it) does not allow.
    for topic in [
        "poison/küche",
        "poison/a,b",
        "poison/a?b",
        "poison/*",
        "poison/a\\b",
    ] {
        let error = route.topic_to_channel(topic).unwrap_err();
        assert_eq!(error.reason(), "invalid_name", "{topic:?}: {error}");
    }
    for topic in ["poison//a", "meta/x"] {
        assert_eq!(
            both("/**", "#")
                .topic_to_channel(topic)
                .unwrap_err()
                .reason(),
            "unmapped",
            "{topic:?}"
        );
    }
}

#[test]
fn every_translated_name_is_valid_on_the_other_side() {
    // Each segment/level built from a code point of every interesting range: whatever comes
    // out is a valid topic or channel.
    let samples: Vec<char> = (0u32..0x300)
        .chain(0xFDC0..0xFE00)
        .chain(0xFFF0..=0xFFFF)
        .chain([0x1FFFE, 0x1FFFF, 0x10FFFE, 0x10FFFF, 0x1F600])
        .filter_map(char::from_u32)
        .collect();
    let route = both("/p/**", "p/#");
    for c in samples {
        for name in [format!("a{c}"), format!("{c}"), format!("{c}/b")] {
            if let Ok(topic) = route.channel_to_topic(&format!("/p/{name}")) {
                assert_eq!(crate::mqtt::validate_topic(&topic), Ok(()), "{topic:?}");
                assert!(!topic.starts_with('$'), "{topic:?}");
            }
            if let Ok(channel) = route.topic_to_channel(&format!("p/{name}")) {
                assert_eq!(
                    crate::bayeux::channel::validate_channel_name(&channel),
                    Ok(()),
                    "{channel:?}"
                );
            }
        }
    }
}

#[test]
fn routes_whose_names_can_never_be_valid_are_refused() {
    use Direction::{BayeuxToMqtt as B2M, MqttToBayeux as M2B};
    let err = refusal("/a/*", "x\u{1}/+", B2M);
    assert_eq!(err.field, "mqtt");
    assert!(err.reason.contains("U+0001"), "{err}");
    let err = refusal("/küche/*", "k/+", M2B);
    assert_eq!(err.field, "bayeux");
    assert!(err.reason.contains("cannot be published to"), "{err}");
    // Subscribing to such a channel is the server's business.
    assert!(compile(&[config("/küche/*", "k/+", B2M)]).is_ok());
}

#[test]
fn replay_refuses_wildcard_subscriptions_and_more_channels_than_the_bound() {
    use Direction::{BayeuxToMqtt as B2M, Both, MqttToBayeux as M2B};
    let routes = compile(&[
        config("/event/A", "a", B2M),
        config("/event/*", "e/+", M2B),
        config("/data/**", "d/#", Both),
    ])
    .unwrap();
    let err = check_replay(&routes, 10).unwrap_err();
    assert_eq!(err.key(), "route[3].bayeux");
    assert!(
        err.reason
            .contains("/data/** is a pattern, but replay.enabled = true"),
        "{err}"
    );
    // Publishing to a pattern's channels subscribes to nothing: fine.
    assert_eq!(check_replay(&routes[..2], 10), Ok(()));
    let many: Vec<RouteConfig> = (0..4)
        .map(|n| config(&format!("/event/E{n}"), &format!("e/{n}"), B2M))
        .collect();
    let many = compile(&many).unwrap();
    assert_eq!(check_replay(&many, 4), Ok(()));
    let err = check_replay(&many, 3).unwrap_err();
    assert_eq!(err.key(), "route[4].bayeux");
    assert!(err.reason.contains("at most 3 Bayeux channels"), "{err}");
}
