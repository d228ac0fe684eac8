#!/usr/bin/env node
// MQTT load generator: publishes bench messages to a broker (MQTT 3.1.1, mqtt-lite.js), as
// fast as the broker takes them (QoS 1: up to --window unacknowledged publishes; QoS 0: as
// fast as the socket drains), in batches of --batch publishes per write, or at a fixed rate.
//
//   node mqtt-pub.js --port P --topic T --qos 0|1 --count N [--window W] [--batch B]
//                    [--rate MSG_PER_S] [--size BYTES]
//
// Prints one JSON line on stdout when done:
//   {"sent":N,"accepted":N,"failed":0,"start_us":…,"end_us":…,"rate":…,"cpu_s":…}

import { benchMessage, cpuSeconds, dueNow, exitWithParent, fail, nowUs, parseArgs, say } from './common.js';
import { MqttLite } from './mqtt-lite.js';

const usage = 'usage: node mqtt-pub.js --port P --topic T --qos 0|1 --count N [--window 200] [--batch 50] [--rate 0] [--size 60]';
const o = parseArgs(process.argv.slice(2), {
    host: '127.0.0.1', port: 1883, topic: '', qos: 1, count: 0, window: 200, batch: 50, rate: 0, size: 60,
    deadline: 120,
}, usage);
if (!o.topic || !o.count) {
    fail(usage, 2);
}

async function main() {
    const client = await MqttLite.connect({ host: o.host, port: o.port, clientId: `bench-pub-${process.pid}` });
    client.onError = e => fail(`mqtt: ${e.message}`);
    let sent = 0;
    let accepted = 0;
    let inFlight = 0;
    let wake = null;
    const wait = () => new Promise(r => { wake = r; });
    const onAck = () => {
        inFlight -= 1;
        accepted += 1;
        if (wake) {
            const w = wake;
            wake = null;
            w();
        }
    };
    const start = nowUs();
    const cpu0 = cpuSeconds();
    const deadline = start + o.deadline * 1e6;
    while (sent < o.count && nowUs() < deadline) {
        let n = dueNow(Math.min(o.batch, o.count - sent), sent, start, o.rate);
        if (n <= 0) {
            await new Promise(r => setTimeout(r, 1));
            continue;
        }
        if (o.qos > 0) {
            if (inFlight >= o.window) {
                await wait();
                continue;
            }
            n = Math.min(n, o.window - inFlight);
        }
        const packets = [];
        for (let i = 0; i < n; ++i) {
            packets.push(client.publishPacket(o.topic, JSON.stringify(benchMessage(sent + i, o.size)), o.qos, onAck));
        }
        sent += n;
        if (o.qos > 0) {
            inFlight += n;
        }
        await client.write(Buffer.concat(packets));
        if (o.qos === 0) {
            accepted += n;
            // Let the socket drain between batches.
            await new Promise(r => setImmediate(r));
        }
    }
    while (inFlight > 0 && nowUs() < deadline) {
        await Promise.race([wait(), new Promise(r => setTimeout(r, 100))]);
    }
    const end = nowUs();
    say(JSON.stringify({
        sent, accepted, failed: sent - accepted, start_us: start, end_us: end,
        rate: sent / ((end - start) / 1e6), cpu_s: cpuSeconds() - cpu0,
    }));
    await client.end();
    process.exit(accepted < o.count ? 1 : 0);
}

exitWithParent(() => process.exit(1));
main().catch(e => fail(e.stack || String(e)));
