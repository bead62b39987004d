/*
 * A StatsD backend for the relayq tests: reports to stdout, one line each, prefixed "RELAYQ ":
 *   {"ready": true}                          once loaded (the servers are already listening)
 *   {"packet": "<text>"}                     every packet the daemon received, as received
 *   {"flush": {counters, timers, gauges, sets}}  what the daemon aggregated, at every flush
 */
function report(obj) {
  process.stdout.write("RELAYQ " + JSON.stringify(obj) + "\n");
}

exports.init = function (startupTime, config, events) {
  events.on("packet", function (msg) {
    report({ packet: msg.toString() });
  });
  events.on("flush", function (timestamp, metrics) {
    const sets = {};
    for (const key in metrics.sets) {
      sets[key] = metrics.sets[key].values();
    }
    report({
      flush: {
        counters: metrics.counters,
        timers: metrics.timers,
        gauges: metrics.gauges,
        sets: sets,
      },
    });
  });
  report({ ready: true });
  return true;
};
