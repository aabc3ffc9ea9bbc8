// Telling the agent about a new ring when it may not be looking: the tab's title flashes while
// anything rings, a short tone plays if the agent switched sound on, and a desktop
// notification appears if the agent allowed them and the tab is not in front. Nothing of the
// consumer's goes into a notification.

const TITLE = document.title;
let flashing = null;
let audio = null;

/** Starts or stops the title flash for `count` waiting rings. */
export function flash(count) {
  if (count === 0) {
    clearInterval(flashing);
    flashing = null;
    document.title = TITLE;
    return;
  }
  const alert = `(${count}) Conversation waiting — ${TITLE}`;
  if (flashing) return;
  let on = false;
  flashing = setInterval(() => {
    on = !on;
    document.title = on ? alert : TITLE;
  }, 1000);
  document.title = alert;
}

/** A new ring: a tone (when on) and a desktop notification (when allowed and not looking). */
export function ring(sound) {
  if (sound) tone();
  if (typeof Notification !== "undefined" && Notification.permission === "granted" && document.visibilityState !== "visible") {
    const n = new Notification("Conversation waiting", { body: "A consumer is waiting for an agent.", tag: "brandgate-ring" });
    n.addEventListener("click", () => window.focus());
  }
}

function tone() {
  try {
    audio ??= new AudioContext();
    const oscillator = audio.createOscillator();
    const gain = audio.createGain();
    oscillator.frequency.value = 880;
    gain.gain.setValueAtTime(0.15, audio.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
    oscillator.connect(gain).connect(audio.destination);
    oscillator.start();
    oscillator.stop(audio.currentTime + 0.4);
  } catch {
    // No audio here: the title and the list still show the ring.
  }
}

export async function askForNotifications() {
  if (typeof Notification === "undefined") return "unsupported";
  return Notification.requestPermission();
}
