/** The run form comes from the server's run-options schema; what is sent is typed and bounded. */
import {
  FormError,
  parseRunForm,
  readInputs,
  renderFields,
  runFormFields
} from '../form';
import { IOptionsSchema } from '../types';

const schema: IOptionsSchema = {
  version: 1,
  one_of: [['target_epsilon', 'noise_multiplier']],
  datasets: ['digits', 'fraud'],
  options: [
    {
      name: 'rounds',
      type: 'int',
      default: 5,
      help: 'federated rounds',
      minimum: 1,
      maximum: 1000,
      basic: true
    },
    {
      name: 'target_epsilon',
      type: 'float',
      default: 3.0,
      help: 'epsilon',
      nullable: true,
      minimum: 0.01,
      maximum: 50,
      basic: true
    },
    {
      name: 'noise_multiplier',
      type: 'float',
      default: null,
      help: 'noise',
      nullable: true,
      minimum: 0.3,
      basic: false
    },
    {
      name: 'learning_rate',
      type: 'float',
      default: 0.1,
      help: 'lr',
      minimum: 0,
      exclusive_minimum: true,
      basic: false
    },
    {
      name: 'aggregator',
      type: 'str',
      default: 'fedavg',
      help: 'rule',
      choices: ['fedavg', 'median'],
      basic: true
    },
    {
      name: 'secure_aggregation',
      type: 'bool',
      default: false,
      help: 'mask',
      basic: false
    }
  ]
};

describe('the run form', () => {
  it('has one field per option, basic ones first, with the defaults filled in', () => {
    const fields = runFormFields(schema);
    expect(fields.map(f => f.name)).toEqual([
      'model',
      'rounds',
      'target_epsilon',
      'aggregator',
      'noise_multiplier',
      'learning_rate',
      'secure_aggregation'
    ]);
    const { inputs } = renderFields(fields);
    const values = readInputs(inputs);
    expect(values).toMatchObject({
      model: 'logistic',
      rounds: '5',
      target_epsilon: '3',
      aggregator: 'fedavg',
      noise_multiplier: '',
      secure_aggregation: 'false'
    });
    const rounds = inputs.find(i => i.name === 'rounds') as HTMLInputElement;
    expect([rounds.type, rounds.min, rounds.max, rounds.step]).toEqual([
      'number',
      '1',
      '1000',
      '1'
    ]);
    // what the defaults give: only the model; the room applies its own defaults
    expect(parseRunForm(schema, values)).toEqual({ model: 'logistic' });
  });

  it('sends what changed, typed', () => {
    const { inputs } = renderFields(runFormFields(schema));
    const values = {
      ...readInputs(inputs),
      rounds: '8',
      aggregator: 'median',
      secure_aggregation: 'true'
    };
    expect(parseRunForm(schema, values)).toEqual({
      model: 'logistic',
      rounds: 8,
      aggregator: 'median',
      secure_aggregation: true
    });
  });

  it('a noise multiplier switches the default target off', () => {
    const values = {
      model: 'mlp',
      rounds: '5',
      target_epsilon: '3',
      noise_multiplier: '1.1'
    };
    expect(parseRunForm(schema, values)).toEqual({
      model: 'mlp',
      noise_multiplier: 1.1,
      target_epsilon: null
    });
  });

  it('refuses values outside the bounds or of the wrong type', () => {
    const bad: Record<string, string>[] = [
      { rounds: '0' },
      { rounds: '2.5' },
      { rounds: 'five' },
      { learning_rate: '0' },
      { target_epsilon: '51' },
      { aggregator: 'sum' },
      { rounds: '' }
    ];
    for (const values of bad) {
      expect(() => parseRunForm(schema, values)).toThrow(FormError);
    }
  });
});
