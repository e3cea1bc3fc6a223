// A "PIXL" button in Orthanc Explorer's top bar, on every page, opening PIXL's operator page
// (/pixl/ui/, served by the PIXL plugin). Added through the Python plugin's
// ExtendOrthancExplorer; Explorer is jQuery Mobile, whose pages are created lazily, so the
// button is added as each page is created.
(function () {
  function addButton(page) {
    var header = $(page).find('[data-role="header"]').first();
    if (header.length === 0 || header.find('.pixl-button').length > 0) {
      return;
    }
    var button = $('<a>PIXL</a>')
      .attr({ href: '../pixl/ui/', 'data-role': 'button', 'data-icon': 'info', 'data-ajax': 'false',
              rel: 'external', title: "PIXL: the operator's page", 'class': 'pixl-button' });
    var group = header.find('.ui-btn-right').first();
    if (group.length > 0) {
      group.prepend(button);
    } else {
      button.addClass('ui-btn-left');
      header.append(button);
    }
  }
  var handler = function () { addButton(this); };
  if (typeof $(document).on === 'function') {
    $(document).on('pagebeforecreate', '[data-role="page"]', handler);
  } else {
    $('[data-role="page"]').live('pagebeforecreate', handler);
  }
})();
