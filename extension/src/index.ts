/**
 * fedjax-room: the JupyterLab "Clean Room" sidebar and its palette commands.
 *
 * The Python side (fedjax_room.jupyter.server) holds the connected rooms and answers the REST routes
 * under /fedjax-room/; this plugin only calls them and draws what they return.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  ICommandPalette,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { api, IOptionsSchema } from './api';
import {
  FormError,
  IFormField,
  parseRunForm,
  readInputs,
  renderFields,
  runFormFields
} from './form';
import { CleanRoomPanel, IConnectionSettings } from './panel';
import { QueryPanel } from './queryPanel';

const PLUGIN_ID = 'fedjax-room:plugin';

export namespace CommandIDs {
  export const connect = 'fedjax-room:connect';
  export const startDemo = 'fedjax-room:start-demo';
  export const openDashboard = 'fedjax-room:open-dashboard';
  export const startRun = 'fedjax-room:start-run';
  export const cancelRun = 'fedjax-room:cancel-run';
  export const disconnect = 'fedjax-room:disconnect';
  export const show = 'fedjax-room:show';
}

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161">
<path d="M12 1 3 5v6c0 5.5 3.8 10.7 9 12 5.2-1.3 9-6.5 9-12V5l-9-4zm0 2.2 7 3.1V11c0 4.4-2.9 8.6-7 9.9-4.1-1.3-7-5.5-7-9.9V6.3l7-3.1z"/>
<path d="M12 7a3 3 0 0 0-3 3v1H8v6h8v-6h-1v-1a3 3 0 0 0-3-3zm0 1.6c.8 0 1.4.6 1.4 1.4v1h-2.8v-1c0-.8.6-1.4 1.4-1.4z"/>
</g></svg>`;

export const cleanRoomIcon = new LabIcon({
  name: 'fedjax-room:icon',
  svgstr: ICON_SVG
});

interface ISettings extends IConnectionSettings {
  defaultUrl: string;
  defaultKey: string;
  demoSites: number;
  demoDataset: string;
}

const DEFAULTS: ISettings = {
  defaultUrl: 'ws://127.0.0.1:8765',
  defaultKey: '',
  demoSites: 3,
  demoDataset: 'digits',
  reconnectInterval: 1000,
  maxReconnectInterval: 30000
};

/** A dialog body made of labelled inputs (form.ts); getValue() returns their values by name. */
class FormBody
  extends Widget
  implements Dialog.IBodyWidget<Record<string, string>>
{
  constructor(fields: IFormField[]) {
    const { node, inputs } = renderFields(fields);
    super({ node });
    this._inputs = inputs;
  }

  getValue(): Record<string, string> {
    return readInputs(this._inputs);
  }

  private readonly _inputs: (HTMLInputElement | HTMLSelectElement)[];
}

async function askForm(
  title: string,
  fields: IFormField[],
  accept: string
): Promise<Record<string, string> | null> {
  const result = await showDialog({
    title,
    body: new FormBody(fields),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: accept })]
  });
  return result.button.accept && result.value ? result.value : null;
}

/** The minimum of a notebook panel this plugin touches (avoids depending on @jupyterlab/notebook). */
interface ISessionWidget {
  context?: { sessionContext?: { ready: Promise<void> } };
}

function str(value: unknown): string | null {
  return typeof value === 'string' && value.length > 0 ? value : null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'The Clean Room sidebar: federated rooms, sites, live DP runs, privacy budgets and audit.',
  autoStart: true,
  requires: [ICommandPalette],
  optional: [ISettingRegistry, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null
  ) => {
    const settings: ISettings = { ...DEFAULTS };
    const { commands, shell } = app;

    const fail = (what: string) => (error: unknown) => {
      void showErrorMessage(
        `Clean Room: ${what}`,
        error instanceof Error ? error.message : String(error)
      );
    };

    const panel = new CleanRoomPanel(
      {
        connect: () => void commands.execute(CommandIDs.connect),
        startDemo: () => void commands.execute(CommandIDs.startDemo),
        startRun: room => void commands.execute(CommandIDs.startRun, { room }),
        openDashboard: (room, run) =>
          void commands.execute(CommandIDs.openDashboard, { room, run }),
        cancelRun: (room, run) =>
          void commands.execute(CommandIDs.cancelRun, { room, run }),
        disconnect: room =>
          void commands.execute(CommandIDs.disconnect, { room })
      },
      settings
    );
    panel.title.icon = cleanRoomIcon;
    shell.add(panel, 'left', { rank: 600 });
    if (restorer) {
      restorer.add(panel, 'fedjax-room-sidebar');
    }
    const queryPanel = new QueryPanel(); // the Query tab (queryPanel.ts)
    shell.add(queryPanel, 'left', { rank: 601 });
    restorer?.add(queryPanel, 'fedjax-room-query');

    const firstRoom = (): string | null => {
      const rooms = panel.rooms;
      return rooms.length ? rooms[0].info.id : null;
    };
    const latestRun = (room: string): string | null => {
      const runs = panel.rooms.find(r => r.info.id === room)?.runs ?? [];
      return runs.length ? runs[runs.length - 1].id : null;
    };
    // the run options and datasets, as the server declares them (GET /fedjax-room/options), read once
    let schema: Promise<IOptionsSchema> | null = null;
    const options = (): Promise<IOptionsSchema> => {
      if (schema === null) {
        schema = api.options();
        schema.catch(() => {
          schema = null; // try again next time
        });
      }
      return schema;
    };

    commands.addCommand(CommandIDs.show, {
      label: 'Clean Room: Show sidebar',
      execute: () => {
        shell.activateById(panel.id);
        return panel.refresh();
      }
    });

    commands.addCommand(CommandIDs.connect, {
      label: 'Clean Room: Connect to room',
      caption:
        'Connect this Jupyter server to a coordinator with an analyst key',
      execute: async args => {
        let url = str(args.url);
        let key = str(args.key);
        if (!url || !key) {
          const form = await askForm(
            'Connect to a Clean Room',
            [
              {
                name: 'url',
                label: 'Coordinator URL',
                value: url ?? settings.defaultUrl
              },
              {
                name: 'key',
                label: 'Analyst key (path on the server)',
                value: key ?? settings.defaultKey
              }
            ],
            'Connect'
          );
          if (!form) {
            return;
          }
          url = form.url.trim();
          key = form.key.trim();
        }
        try {
          const room = await api.connect(url, key);
          shell.activateById(panel.id);
          await panel.refresh();
          return room;
        } catch (error) {
          fail('could not connect')(error);
        }
      }
    });

    commands.addCommand(CommandIDs.startDemo, {
      label: 'Clean Room: Start demo room',
      caption:
        'Start an embedded room with simulated sites holding a built-in dataset',
      execute: async args => {
        let sites = typeof args.sites === 'number' ? args.sites : null;
        let dataset = str(args.dataset);
        if (sites === null || !dataset) {
          let datasets: string[];
          try {
            datasets = (await options()).datasets ?? [settings.demoDataset];
          } catch (error) {
            fail('cannot read the datasets the server offers')(error);
            return;
          }
          const form = await askForm(
            'Start a demo room',
            [
              {
                name: 'sites',
                label: 'Sites',
                value: String(settings.demoSites)
              },
              {
                name: 'dataset',
                label: 'Dataset',
                value: settings.demoDataset,
                options: datasets
              }
            ],
            'Start'
          );
          if (!form) {
            return;
          }
          sites = parseInt(form.sites, 10);
          dataset = form.dataset;
        }
        shell.activateById(panel.id);
        try {
          const room = await panel.busyWhile(
            `Starting a demo room: a coordinator and ${sites} site${sites === 1 ? '' : 's'} with ${dataset} data (about 20 s)…`,
            () => api.startDemo(sites as number, dataset as string)
          );
          await panel.refresh();
          return room;
        } catch (error) {
          fail('could not start the demo room')(error);
        }
      }
    });

    commands.addCommand(CommandIDs.startRun, {
      label: 'Clean Room: Start run',
      caption:
        'Train a model across the sites of a room, with differential privacy',
      execute: async args => {
        const room = str(args.room) ?? firstRoom();
        if (!room) {
          void showErrorMessage(
            'Clean Room',
            'Connect to a room or start a demo room first.'
          );
          return;
        }
        let body: Record<string, unknown>;
        if (typeof args.rounds === 'number') {
          body = { ...args, room: undefined };
        } else {
          let runOptions: IOptionsSchema;
          try {
            runOptions = await options();
          } catch (error) {
            fail('cannot read the run options the server offers')(error);
            return;
          }
          const form = await askForm(
            'Start a run',
            runFormFields(runOptions),
            'Train'
          );
          if (!form) {
            return;
          }
          try {
            body = parseRunForm(runOptions, form);
          } catch (error) {
            if (error instanceof FormError) {
              fail('the run was not started')(error);
              return;
            }
            throw error;
          }
        }
        try {
          const run = await panel.busyWhile(
            'Starting the run: the sites check it against their policies…',
            () => api.startRun(room, body)
          );
          await panel.refresh();
          return run;
        } catch (error) {
          fail('the run was not started')(error);
        }
      }
    });

    commands.addCommand(CommandIDs.cancelRun, {
      label: 'Clean Room: Cancel run',
      caption:
        'Cancel one of your runs: its sites stop and the room records who cancelled it and why',
      execute: async args => {
        const room = str(args.room) ?? firstRoom();
        const run = room ? (str(args.run) ?? latestRun(room)) : null;
        if (!room || !run) {
          void showErrorMessage('Clean Room', 'There is no run to cancel.');
          return;
        }
        let reason = typeof args.reason === 'string' ? args.reason : null;
        if (reason === null) {
          // destructive: ask first (the sites stop; a cancelled run cannot be resumed)
          const result = await showDialog({
            title: `Cancel ${run}?`,
            body: new FormBody([
              {
                name: 'reason',
                label:
                  'Its sites stop and the room records who cancelled it. Reason (kept in the audit log):',
                value: ''
              }
            ]),
            buttons: [
              Dialog.cancelButton({ label: 'Keep running' }),
              Dialog.warnButton({ label: 'Cancel run' })
            ]
          });
          if (!result.button.accept || !result.value) {
            return;
          }
          reason = result.value.reason.trim();
        }
        try {
          const result = await api.cancelRun(room, run, reason);
          await panel.refresh();
          return result;
        } catch (error) {
          fail('the run was not cancelled')(error);
        }
      }
    });

    commands.addCommand(CommandIDs.openDashboard, {
      label: 'Clean Room: Open dashboard notebook',
      caption:
        'Create (or open) a notebook whose first cell shows the live run dashboard widget',
      execute: async args => {
        const room = str(args.room) ?? firstRoom();
        if (!room) {
          void showErrorMessage(
            'Clean Room',
            'Connect to a room or start a demo room first.'
          );
          return;
        }
        try {
          const run = 'run' in args ? str(args.run) : latestRun(room);
          const { path } = await panel.busyWhile(
            'Writing the dashboard notebook…',
            () => api.dashboardNotebook(room, run)
          );
          const widget = (await commands.execute('docmanager:open', {
            path
          })) as ISessionWidget | undefined;
          if (args.execute !== false && widget?.context?.sessionContext) {
            // the notebook names its kernel (the Clean Room kernel when installed): wait for it, then run
            await panel.busyWhile('Starting the notebook’s kernel…', () =>
              widget.context!.sessionContext!.ready.then(() =>
                commands.execute('notebook:run-all-cells')
              )
            );
          }
          return path;
        } catch (error) {
          fail('could not open the dashboard notebook')(error);
        }
      }
    });

    commands.addCommand(CommandIDs.disconnect, {
      label: 'Clean Room: Disconnect',
      execute: async args => {
        const room = str(args.room) ?? firstRoom();
        if (!room) {
          return;
        }
        const info = panel.rooms.find(r => r.info.id === room)?.info;
        if (args.confirm !== false) {
          // destructive: ask first
          const demo = info?.kind === 'demo';
          const result = await showDialog({
            title: demo ? 'Stop the demo room?' : `Disconnect from ${room}?`,
            body: demo
              ? 'Its coordinator and site processes stop: runs in progress end, and notebooks attached to it lose it.'
              : 'The sidebar stops following this room (the room itself goes on).',
            buttons: [
              Dialog.cancelButton({ label: 'Keep it' }),
              Dialog.warnButton({ label: demo ? 'Stop room' : 'Disconnect' })
            ]
          });
          if (!result.button.accept) {
            return;
          }
        }
        try {
          await api.disconnect(room);
        } catch (error) {
          fail('could not disconnect')(error);
        }
        await panel.refresh();
      }
    });

    const category = 'Clean Room';
    for (const command of [
      CommandIDs.connect,
      CommandIDs.startDemo,
      CommandIDs.openDashboard,
      CommandIDs.startRun,
      CommandIDs.show
    ]) {
      palette.addItem({ command, category });
    }

    const load = (registry: ISettingRegistry.ISettings) => {
      const composite = registry.composite as Partial<ISettings>;
      Object.assign(settings, DEFAULTS, composite);
      panel.setSettings(settings);
    };
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(registry => {
          load(registry);
          registry.changed.connect(load);
        })
        .catch(reason =>
          console.error('fedjax-room: failed to load settings.', reason)
        );
    }

    void app.restored.then(() => panel.refresh());
  }
};

export default plugin;
