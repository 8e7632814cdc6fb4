// Account: sign out everywhere, download my data (the export), and delete my account after a
// dialog that says what erasure means and asks for a typed confirmation.

import { $ } from '../dom.js';
import { t, dateTime } from '../i18n.js';
import { download } from '../session.js';

export function setupAccount(app) {
  let opener = null;

  function render() {
    const me = app.me;
    if (!me) return;
    $('last-login').textContent = me.last_login_at ? t('account.lastLogin', { when: dateTime(me.last_login_at) }) : '';
    $('delete-confirm-label').textContent = t('delete.confirm.label', { word: t('delete.word') });
  }

  $('logout-all').addEventListener('click', () => app.signOut({ everywhere: true }));

  $('export').addEventListener('click', async () => {
    $('export').disabled = true;
    try {
      const blob = await download('/users/me/export');
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = `neulbi-export-${new Date().toISOString().slice(0, 10)}.json`;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      app.toast(t('account.export.done'));
    } catch (e) {
      app.fail(e);
    } finally {
      $('export').disabled = false;
    }
  });

  const dialog = $('delete-dialog');
  $('delete-account').addEventListener('click', (ev) => {
    opener = ev.currentTarget;
    $('delete-confirm').value = '';
    $('delete-error').textContent = '';
    $('delete-submit').disabled = true;
    render();
    dialog.showModal();
    $('delete-confirm').focus();
  });
  $('delete-confirm').addEventListener('input', () => {
    $('delete-submit').disabled = $('delete-confirm').value.trim().toLowerCase() !== t('delete.word').toLowerCase();
  });
  $('delete-cancel').addEventListener('click', () => dialog.close());
  // Focus goes back to the button that opened the dialog.
  dialog.addEventListener('close', () => opener?.focus());
  $('delete-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if ($('delete-submit').disabled) return;
    $('delete-submit').disabled = true;
    try {
      await app.api('DELETE', '/users/me');
      opener = null;
      dialog.close();
      await app.signedOut('deleted');
    } catch (e) {
      $('delete-error').textContent = app.errorText(e);
      $('delete-submit').disabled = false;
    }
  });

  return {
    async show() {
      await app.refreshMe();
      render();
    },
    relabel: render,
  };
}
