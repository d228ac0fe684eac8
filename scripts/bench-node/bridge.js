#!/usr/bin/env node
// The Node.js baseline bridge docs/benchmarks.md compares against: what a straightforward Bayeux →
// MQTT bridge in Node looks like. The CometD JavaScript client (npm cometd +
// cometd-nodejs-client) subscribes to a channel pattern, and mqtt.js publishes every
// delivered message's data as JSON to the corresponding topic. Writes are batched: each
// batch of deliveries that arrives in one long-poll response goes out in one socket write
// (cork/uncork), and mqtt.js keeps every QoS 1 publish until its PUBACK.
//
//   node bridge.js --url URL --channel /bench/in/** --port P --topic-prefix bench/in --qos 1
//                  [--transport long-polling|websocket]
//
// Prints `ready` once both sides are connected and the Bayeux subscription is confirmed.
// Stops on SIGTERM/SIGINT or when stdin closes.

import { adapt } from 'cometd-nodejs-client';
import { CometD } from 'cometd';
import mqtt from 'mqtt';
import { exitWithParent, fail, parseArgs, say } from './common.js';

const usage = 'usage: node bridge.js --url URL --channel PATTERN --port P --topic-prefix T --qos 0|1 [--transport long-polling|websocket]';
const o = parseArgs(process.argv.slice(2), {
    url: '', channel: '', host: '127.0.0.1', port: 1883, topicPrefix: '', qos: 1, transport: 'long-polling',
}, usage);
if (!o.url || !o.channel || !o.topicPrefix) {
    fail(usage, 2);
}

// `/bench/in/**` → strip `/bench/in`, keep the rest as topic levels under the prefix.
const channelPrefix = o.channel.replace(/\/\*\*?$/, '');

adapt();
const cometd = new CometD();
// --transport long-polling (the default; the CometD Node server has nothing else) leaves
// long-polling only; websocket keeps the client's own order, WebSocket first.
if (o.transport !== 'websocket') {
    cometd.unregisterTransport('websocket');
}
cometd.configure({ url: o.url, logLevel: 'warn' });

const client = mqtt.connect({
    host: o.host, port: o.port, protocolVersion: 5, clean: true,
    clientId: `node-bridge-${process.pid}`,
});
client.on('error', e => process.stderr.write(`bridge.js: mqtt: ${e.message}\n`));

let forwarded = 0;
let failed = 0;
let corked = false;

function forward(message) {
    const topic = o.topicPrefix + message.channel.slice(channelPrefix.length);
    // Batch the socket writes of one long-poll response (delivered in one tick).
    if (!corked && client.stream) {
        corked = true;
        client.stream.cork();
        process.nextTick(() => {
            corked = false;
            client.stream.uncork();
        });
    }
    client.publish(topic, JSON.stringify(message.data ?? null), { qos: o.qos }, e => {
        if (e) {
            failed += 1;
        } else {
            forwarded += 1;
        }
    });
}

let mqttUp = false;
let bayeuxUp = false;
const maybeReady = () => {
    if (mqttUp && bayeuxUp) {
        say('ready');
    }
};
client.on('connect', () => {
    mqttUp = true;
    maybeReady();
});
cometd.handshake(reply => {
    if (!reply.successful) {
        fail(`handshake failed: ${JSON.stringify(reply)}`);
    }
    cometd.subscribe(o.channel, forward, subscribed => {
        if (!subscribed.successful) {
            fail(`subscribe failed: ${JSON.stringify(subscribed)}`);
        }
        bayeuxUp = true;
        maybeReady();
    });
});

exitWithParent(reason => {
    process.stderr.write(`bridge.js: stopping (${reason}); forwarded ${forwarded}, failed ${failed}\n`);
    cometd.disconnect();
    client.end(false, () => process.exit(0));
    setTimeout(() => process.exit(0), 1000);
});
