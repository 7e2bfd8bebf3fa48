// Preloaded (node --import) before the Portkey gateway, whose server listens on every
// interface with no option to choose: bind whatever it listens on to 127.0.0.1 instead.
import net from "node:net";

const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const callback = args.find((a) => typeof a === "function");
  const first = args[0];
  if (typeof first === "number" || (typeof first === "string" && /^\d+$/.test(first))) {
    return listen.call(this, { port: Number(first), host: "127.0.0.1" }, callback);
  }
  if (first && typeof first === "object" && !("path" in first) && !("fd" in first)) {
    return listen.call(this, { ...first, host: "127.0.0.1" }, callback);
  }
  return listen.apply(this, args);
};
