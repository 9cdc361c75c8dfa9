// The publish panel: create any key, or publish to any topic. With
// "retain" the value is stored (`set`: the key keeps it, the bridge
// publishes it retained where it maps the key out, as MQTT Explorer's
// retain flag does); without, it is a transient `publish` (subscribers and
// MQTT see it, nothing is stored). The value is typed as JSON, text, hex or
// base64; the content type follows the format unless one is given.
//
// Invariant: nothing is sent but what the form holds when Publish is
// pressed; an error leaves the form as it was, for another try.
import { $, say, bytesFromHex, bytesFromBase64Text, base64FromBytes } from './util.js';
import { session } from './connection.js';
import { selected, selection } from './selection.js';

// The value's fields of a set or publish (API.md "Entry envelope").
function valueFields() {
  const text = $('pub-value').value;
  const as = $('pub-as').value;
  if (as === 'json') {
    try { return { value: JSON.parse(text) }; } catch (err) { throw new Error(`not valid JSON: ${err.message}`); }
  }
  if (as === 'text') return { text };
  return { base64: base64FromBytes(as === 'hex' ? bytesFromHex(text) : bytesFromBase64Text(text)) };
}

export function initPublish() {
  // Opened with nothing typed: the selected key is the likely topic.
  $('publish-panel').addEventListener('toggle', () => {
    if ($('publish-panel').open && !$('pub-key').value && selected) $('pub-key').value = selected;
  });
  const retainSays = () => { $('pub-send').textContent = $('pub-retain').checked ? 'Store and publish' : 'Publish (transient)'; };
  $('pub-retain').addEventListener('change', retainSays);
  retainSays();

  $('pub-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    say('pub-msg', '');
    const key = $('pub-key').value.trim();
    if (!key) { say('pub-msg', 'Enter a key (an MQTT topic name, like home/kitchen/light).'); return; }
    let fields;
    try { fields = valueFields(); } catch (err) { say('pub-msg', `Not sent: the value is ${err.message}.`); return; }
    const type = $('pub-type').value.trim();
    if (type) fields.content_type = type;
    const retain = $('pub-retain').checked;
    try {
      if (retain) {
        const ok = await session.request('set', { key, ...fields });
        say('pub-msg', `Stored ${key} at rev ${ok.rev}.`, true);
        if (key === selected) return; // the live event shows it
        const open = document.createElement('button');
        open.type = 'button';
        open.className = 'link';
        open.textContent = 'Show it';
        open.addEventListener('click', () => selection.pick(key, { reveal: true }));
        $('pub-msg').append(' ', open);
      } else {
        await session.request('publish', { key, ...fields });
        say('pub-msg', `Published to ${key} (transient: not stored, not retained).`, true);
      }
    } catch (err) {
      say('pub-msg', `Not sent: ${err.message}`);
    }
  });
}
