export { default } from '../../jest.shared.js';
