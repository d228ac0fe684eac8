#!/usr/bin/env node
// MQTT counter: subscribes to a topic filter (MQTT 5, mqtt-lite.js) and records each bench
// message's arrival.
//
//   node mqtt-count.js --port P --topic FILTER --qos Q --count N [--idle MS] [--deadline S]
//
// Prints `ready` once subscribed, then one JSON summary line (see common.js) when N
// messages arrived, after --idle ms without one, or at --deadline seconds.

import { Arrivals, cpuSeconds, exitWithParent, fail, nowUs, parseArgs, say, watchdog } from './common.js';
import { MqttLite } from './mqtt-lite.js';

const usage = 'usage: node mqtt-count.js --port P --topic FILTER --qos 0|1 --count N [--idle 3000] [--deadline 120]';
const o = parseArgs(process.argv.slice(2), {
    host: '127.0.0.1', port: 1883, topic: '', qos: 1, count: 0, idle: 3000, deadline: 120,
}, usage);
if (!o.topic || !o.count) {
    fail(usage, 2);
}

const arrivals = new Arrivals(o.count);
let cpu0 = 0;
let client = null;
const finish = watchdog(arrivals, o.idle, o.deadline * 1000, reason => {
    say(JSON.stringify(arrivals.summary({ end: reason, cpu_s: cpuSeconds() - cpu0 })));
    const exit = () => process.exit(0);
    if (client) {
        client.end().then(exit, exit);
    }
    setTimeout(exit, 500);
});

async function main() {
    client = await MqttLite.connect({
        host: o.host, port: o.port, clientId: `bench-count-${process.pid}`, version: 5,
        onMessage: (_topic, payload) => {
            if (arrivals.add(payload.toString('utf8'), nowUs())) {
                finish('all');
            }
        },
    });
    client.onError = e => fail(`mqtt: ${e.message}`);
    const granted = await client.subscribe(o.topic, o.qos);
    if (granted > 2) {
        fail(`subscribe to ${o.topic} refused`);
    }
    cpu0 = cpuSeconds();
    say('ready');
}

exitWithParent(() => process.exit(1));
main().catch(e => fail(e.stack || String(e)));
