'use strict';
// ESLint (flat config): @eslint/js recommended, plus the rules below, each with its reason.
// Layout is Prettier's job (.prettierrc.json), so no stylistic rules here.

const js = require('@eslint/js');
const globals = require('globals');

module.exports = [
  js.configs.recommended,
  {
    files: ['**/*.js'],
    languageOptions: { ecmaVersion: 2024, sourceType: 'commonjs', globals: { ...globals.node } },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // STYLE.md "Small pieces": a function fits on a screen, complexity <= 15 (ruff's C90
      // bound for the Python code), nesting a reader can follow.
      complexity: ['error', 15],
      'max-lines-per-function': ['error', { max: 50, skipBlankLines: true, skipComments: true }],
      'max-depth': ['error', 4],
      // Every file is CommonJS with one 'use strict' at the top.
      strict: ['error', 'global'],
      // Logs are JSON lines through log.js (STYLE.md "Services"), never console output.
      'no-console': 'error',
      // Catch the bugs the recommended set leaves out: loose equality, reassigned bindings
      // that should be const, and unused arguments (an intentionally unused one starts with _).
      eqeqeq: ['error', 'always'],
      'prefer-const': 'error',
      'no-var': 'error',
      'no-unused-vars': ['error', { args: 'after-used', argsIgnorePattern: '^_', caughtErrors: 'all' }],
      // Prettier moves a long brace-less `if` body to its own line, where it reads as
      // unconditional: such a body gets braces.
      curly: ['error', 'multi-line'],
      // A shadowed name in pixel code reads as the outer one; make that a finding.
      'no-shadow': 'error',
    },
  },
];
