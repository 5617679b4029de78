/**
 * The "Start a run" form, generated from the run-options schema the server serves
 * (GET /fedjax-room/options, built from fedjax_room.protocol.config.RunConfig): one input per option,
 * the basic ones first, each with its help text, bounds and default; and the parser that turns what a
 * person typed into the options of POST /fedjax-room/rooms/<id>/runs (only those changed from their
 * default, so the room applies its own defaults).
 *
 * Pure: the DOM only.
 */
import { el } from './render';
import { IOption, IOptionsSchema } from './types';

export interface IFormField {
  name: string;
  label: string;
  value: string;
  /** a select's choices; a checkbox when `checkbox` */
  options?: string[];
  checkbox?: boolean;
  help?: string;
  type?: 'number' | 'text';
  min?: string;
  max?: string;
  step?: string;
}

export const DEFAULT_MODELS = ['logistic', 'mlp', 'cnn', 'scatter'];

function optionLabel(option: IOption): string {
  const words = option.name.replace(/_/g, ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function fieldFor(option: IOption): IFormField {
  const value =
    option.default === null || option.default === undefined
      ? ''
      : String(option.default);
  const bounds: string[] = [];
  if (option.minimum !== null && option.minimum !== undefined) {
    bounds.push(`${option.exclusive_minimum ? '>' : '≥'} ${option.minimum}`);
  }
  if (option.maximum !== null && option.maximum !== undefined) {
    bounds.push(`≤ ${option.maximum}`);
  }
  const help = [option.help, bounds.join(', ')].filter(Boolean).join(' · ');
  if (option.type === 'bool') {
    return {
      name: option.name,
      label: optionLabel(option),
      value,
      checkbox: true,
      help
    };
  }
  if (option.choices && option.choices.length) {
    return {
      name: option.name,
      label: optionLabel(option),
      value,
      options: option.choices,
      help
    };
  }
  const numeric = option.type === 'int' || option.type === 'float';
  return {
    name: option.name,
    label: optionLabel(option),
    value,
    help,
    type: numeric ? 'number' : 'text',
    min:
      numeric && option.minimum !== null && option.minimum !== undefined
        ? String(option.minimum)
        : undefined,
    max:
      numeric && option.maximum !== null && option.maximum !== undefined
        ? String(option.maximum)
        : undefined,
    step: option.type === 'int' ? '1' : numeric ? 'any' : undefined
  };
}

/** The run form's fields: the model family, then each option (basic ones first, in schema order). */
export function runFormFields(schema: IOptionsSchema): IFormField[] {
  const models =
    schema.families && schema.families.length
      ? schema.families
      : DEFAULT_MODELS;
  const basic = schema.options.filter(o => o.basic);
  const more = schema.options.filter(o => !o.basic);
  return [
    {
      name: 'model',
      label: 'Model',
      value: models[0],
      options: models,
      help: 'model family'
    },
    ...basic.map(fieldFor),
    ...more.map(fieldFor)
  ];
}

/** The form's inputs; `getValue()` of the dialog body reads them back by name. */
export function renderFields(fields: IFormField[]): {
  node: HTMLElement;
  inputs: (HTMLInputElement | HTMLSelectElement)[];
} {
  const node = el('div', { class: 'fjr-form' });
  const inputs: (HTMLInputElement | HTMLSelectElement)[] = [];
  for (const field of fields) {
    const label = el('label', { title: field.help ?? '' }, field.label);
    let input: HTMLInputElement | HTMLSelectElement;
    if (field.options) {
      const select = el('select', { name: field.name, class: 'jp-mod-styled' });
      for (const option of field.options) {
        select.append(el('option', { value: option }, option));
      }
      select.value = field.value;
      input = select;
    } else {
      const box = el('input', { name: field.name, class: 'jp-mod-styled' });
      if (field.checkbox) {
        box.type = 'checkbox';
        box.checked = field.value === 'true';
      } else {
        box.type = field.type ?? 'text';
        for (const attr of ['min', 'max', 'step'] as const) {
          const v = field[attr];
          if (v !== undefined) {
            box.setAttribute(attr, v);
          }
        }
        box.value = field.value;
      }
      input = box;
    }
    label.append(input);
    if (field.help) {
      label.append(el('span', { class: 'fjr-form-help' }, field.help));
    }
    node.append(label);
    inputs.push(input);
  }
  return { node, inputs };
}

/** What the inputs hold, by name (a checkbox as "true" / "false"). */
export function readInputs(
  inputs: (HTMLInputElement | HTMLSelectElement)[]
): Record<string, string> {
  return Object.fromEntries(
    inputs.map(i => [
      i.name,
      i instanceof HTMLInputElement && i.type === 'checkbox'
        ? String(i.checked)
        : i.value
    ])
  );
}

export class FormError extends Error {}

/**
 * The POST body for the values a person typed: the model family plus each option whose value differs
 * from its default, typed as the schema says. Throws FormError naming the option that is not valid.
 */
export function parseRunForm(
  schema: IOptionsSchema,
  values: Record<string, string>
): Record<string, unknown> {
  const out: Record<string, unknown> = {
    model: values.model || DEFAULT_MODELS[0]
  };
  for (const option of schema.options) {
    if (values[option.name] === undefined) {
      continue; // not on the form: the room's default
    }
    const raw = values[option.name].trim();
    const fallback =
      option.default === null || option.default === undefined
        ? ''
        : String(option.default);
    if (raw === fallback) {
      continue;
    }
    if (raw === '') {
      if (option.nullable) {
        out[option.name] = null;
        continue;
      }
      throw new FormError(`${option.name} needs a value`);
    }
    let value: unknown = raw;
    if (option.type === 'bool') {
      value = raw === 'true';
    } else if (option.type === 'int' || option.type === 'float') {
      const number = Number(raw);
      if (
        !Number.isFinite(number) ||
        (option.type === 'int' && !Number.isInteger(number))
      ) {
        throw new FormError(
          `${option.name} must be ${option.type === 'int' ? 'a whole number' : 'a number'}, not ${raw}`
        );
      }
      const min = option.minimum;
      const max = option.maximum;
      if (
        min !== null &&
        min !== undefined &&
        (option.exclusive_minimum ? number <= min : number < min)
      ) {
        throw new FormError(
          `${option.name} must be ${option.exclusive_minimum ? 'above' : 'at least'} ${min}`
        );
      }
      if (max !== null && max !== undefined && number > max) {
        throw new FormError(`${option.name} must be at most ${max}`);
      }
      value = number;
    } else if (
      option.choices &&
      option.choices.length &&
      !option.choices.includes(raw)
    ) {
      throw new FormError(
        `${option.name} must be one of ${option.choices.join(', ')}`
      );
    }
    out[option.name] = value;
  }
  for (const group of schema.one_of ?? []) {
    // giving one of a one-of group (noise_multiplier) switches the other's default (target_epsilon) off
    const given = group.filter(
      name => out[name] !== undefined && out[name] !== null
    );
    if (given.length === 1) {
      for (const name of group) {
        if (name !== given[0] && out[name] === undefined) {
          out[name] = null;
        }
      }
    }
  }
  return out;
}
