/**
 * The "Query" tab of the Clean Room sidebar: a DP query (count, count by label, histogram, mean, sum,
 * quantiles, missing; group-by; secure aggregation) over the sites of a connected room, answered by
 * POST /fedjax-room/rooms/<id>/query and drawn by query.ts. Each query spends epsilon at each site, from
 * the same cap as training; a refusal shows its typed reason.
 */
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { ApiError, requestAPI } from './api';
import { FormError, readInputs, renderFields } from './form';
import {
  IQueryResult,
  parseQueryForm,
  queryFormFields,
  renderQueryResult
} from './query';
import { el } from './render';
import { IStatus } from './types';

export const queryIcon = new LabIcon({
  name: 'fedjax-room:query-icon',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><path d="M4 20h16v-2H4zM6 16h3V9H6zm4.5 0h3V4h-3zM15 16h3v-5h-3z"/></g></svg>`
});

/** Run one query on room `room` (its fields as parseQueryForm gives them). */
export function runQuery(
  room: string,
  body: Record<string, unknown>
): Promise<IQueryResult> {
  return requestAPI<IQueryResult>(`rooms/${encodeURIComponent(room)}/query`, {
    method: 'POST',
    body: JSON.stringify(body)
  });
}

export class QueryPanel extends Widget {
  constructor() {
    super();
    this.id = 'fedjax-room-query';
    this.title.caption = 'Clean Room: query';
    this.title.icon = queryIcon;
    this.addClass('fjr-panel');
    this.addClass('fjr-query-panel');
    this._form = el('div', { class: 'fjr-query-form' });
    this._message = el('div', { class: 'fjr-query-message', role: 'status' });
    this._result = el('div', { class: 'fjr-query-output' });
    const run = el(
      'button',
      {
        class: 'jp-Button fjr-button',
        type: 'button',
        'data-action': 'run-query'
      },
      'Run query'
    );
    run.addEventListener('click', () => void this.submit());
    this.node.append(
      el(
        'div',
        { class: 'fjr-header' },
        el('span', { class: 'fjr-title' }, 'Query')
      ),
      this._form,
      run,
      this._message,
      this._result
    );
    this._draw([]);
  }

  /** Read the connected rooms again (the room list of the form). */
  async refresh(): Promise<void> {
    try {
      const status = await requestAPI<IStatus>('status');
      const rooms = status.rooms.map(r => r.id);
      if (rooms.join() !== this._rooms.join()) {
        this._draw(rooms);
      }
      if (!rooms.length) {
        this._say('Connect to a room or start a demo room first.');
      }
    } catch (error) {
      this._say(error instanceof Error ? error.message : String(error), true);
    }
  }

  /** Send the form's query; show the result, or the reason it was refused. */
  async submit(): Promise<IQueryResult | null> {
    const values = readInputs(this._inputs);
    let body: Record<string, unknown>;
    try {
      body = parseQueryForm(values);
    } catch (error) {
      if (error instanceof FormError) {
        this._say(error.message, true);
        return null;
      }
      throw error;
    }
    if (!values.room) {
      this._say('Connect to a room or start a demo room first.', true);
      return null;
    }
    this._say('Asking the sites…');
    try {
      const result = await runQuery(values.room, body);
      this._result.replaceChildren(renderQueryResult(result));
      this._say('');
      return result;
    } catch (error) {
      const message =
        error instanceof ApiError || error instanceof Error
          ? error.message
          : String(error);
      this._say(`Refused: ${message}`, true);
      return null;
    }
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  private _draw(rooms: string[]): void {
    const kept = readInputs(this._inputs);
    this._rooms = rooms;
    const { node, inputs } = renderFields(queryFormFields(rooms));
    node.style.maxHeight = 'none'; // the whole tab scrolls, not the form in it
    for (const input of inputs) {
      if (input.name !== 'room' && kept[input.name] !== undefined) {
        if (input instanceof HTMLInputElement && input.type === 'checkbox') {
          input.checked = kept[input.name] === 'true';
        } else {
          input.value = kept[input.name];
        }
      }
    }
    this._inputs = inputs;
    this._form.replaceChildren(node);
  }

  private _say(text: string, error = false): void {
    this._message.textContent = text;
    this._message.classList.toggle('fjr-error', error);
  }

  private readonly _form: HTMLElement;
  private readonly _message: HTMLElement;
  private readonly _result: HTMLElement;
  private _inputs: (HTMLInputElement | HTMLSelectElement)[] = [];
  private _rooms: string[] = [];
}
